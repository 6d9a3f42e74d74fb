"""/v1/chat/completions request -> /api/chat body (shared reference §2.2)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from herd.errors import InvalidRequest
from herd.router.api.body import parse
from herd.router.convert.request import (
    Converted,
    check_fields,
    get_field,
    one_choice,
    refuse,
    require_model,
    sampling_options,
    stream_flags,
)
from herd.router.convert.toolchoice import ToolPlan, constrain

EFFORT = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
_DATA_URL = re.compile(r"^data:(image/(?:jpeg|jpg|png|webp|gif))?;base64,(.*)$", re.S)


_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "frequency_penalty",
        "presence_penalty",
        "response_format",
        "tools",
        "tool_choice",
        "n",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "reasoning",
        "parallel_tool_calls",
        "modalities",
    }
)
_MESSAGE_FIELDS = frozenset(
    {
        "role",
        "content",
        "name",
        "tool_calls",
        "tool_call_id",
        "reasoning",
        "reasoning_content",
        "thinking",
        "refusal",
    }
)


def chat_request(body: Any) -> Converted:
    """Turn a /v1/chat/completions body into an /api/chat body."""
    where = "chat.completions"
    body = require_model(body, where)
    check_fields(body, _CHAT_FIELDS, where)
    one_choice(body, where)
    modalities = get_field(body, "modalities", (list,), where)
    if modalities and modalities != ["text"]:
        raise refuse(where, "modalities", "other than ['text'] is not supported")
    stream, include_usage = stream_flags(body, where)
    messages = get_field(body, "messages", (list,), where)
    if not messages:
        raise refuse(where, "messages", "must be a non-empty list")
    native: dict[str, Any] = {
        "model": body["model"],
        "messages": _messages(messages),
        "stream": stream,
        "options": sampling_options(body, where),
    }
    tools = [
        tool(t, i) for i, t in enumerate(get_field(body, "tools", (list,), where) or ())
    ]
    plan = tool_plan(body, tools, where)
    if tools and body.get("tool_choice") != "none":
        native["tools"] = tools
    fmt = _response_format(get_field(body, "response_format", (dict,), where), where)
    if fmt is not None:
        if plan.forced:
            raise refuse(
                where, "response_format", "cannot be combined with a forced tool_choice"
            )
        native["format"] = fmt
    constrain(native, plan)
    think = _think(body, where)
    if think is not None:
        native["think"] = think
    top = get_field(body, "top_logprobs", (int,), where)
    if get_field(body, "logprobs", (bool,), where):
        native["logprobs"] = True
        if top is not None:
            if not 0 <= top <= 20:
                raise refuse(where, "top_logprobs", "must be within 0..20")
            native["top_logprobs"] = top
    elif top:
        raise refuse(where, "top_logprobs", "requires 'logprobs': true")
    return Converted(native, body["model"], stream, include_usage, plan=plan)


def tool_plan(
    body: Mapping[str, Any], tools: list[dict[str, Any]], where: str
) -> ToolPlan:
    """`tool_choice` and `parallel_tool_calls` as a ToolPlan (see toolchoice).

    Accepts both the Chat Completions form of a named function
    (`{"type": "function", "function": {"name": N}}`) and the Responses form
    (`{"type": "function", "name": N}`).
    """
    single = get_field(body, "parallel_tool_calls", (bool,), where) is False
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none"):
        return ToolPlan((), single)
    names = tuple(t["function"]["name"] for t in tools)
    if choice == "required":
        if not names:
            raise refuse(where, "tool_choice", "'required' needs at least one tool")
        return ToolPlan(names, True)
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else choice.get("name")
        key = "tool_choice.function" if isinstance(fn, Mapping) else "tool_choice"
        if not isinstance(name, str) or name not in names:
            raise refuse(
                where,
                f"{key}.name",
                f"{json.dumps(name)[:60]} is not one of the offered tools",
            )
        return ToolPlan((name,), True)
    shown = json.dumps(choice)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise refuse(
        where,
        "tool_choice",
        f"{shown} is not supported (auto, none, required, or one function)",
    )


def tool(spec: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(spec, Mapping) or spec.get("type") != "function":
        raise InvalidRequest(
            f"{where}: only tools of type 'function' are supported", param=where
        )
    fn = spec.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(
            f"{where}.function.name is required", param=f"{where}.function.name"
        )
    inner = f"{where}.function"
    out = {"name": fn["name"]}
    description = get_field(fn, "description", (str,), inner)
    if description is not None:
        out["description"] = description
    parameters = get_field(fn, "parameters", (dict,), inner)
    if parameters is not None:
        out["parameters"] = parameters
    return {"type": "function", "function": out}


def _response_format(fmt: Mapping[str, Any] | None, where: str) -> Any:
    if fmt is None:
        return None
    kind = get_field(fmt, "type", (str,), "response_format")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = get_field(fmt, "json_schema", (dict,), "response_format") or {}
        schema = spec.get("schema")
        if not isinstance(schema, Mapping):
            raise refuse(
                "response_format.json_schema", "schema", "is required (an object)"
            )
        return dict(schema)
    shown = repr(kind)[:80]
    raise refuse("response_format", "type", f"{shown} is not known")


def _think(body: Mapping[str, Any], where: str) -> Any:
    effort = get_field(body, "reasoning_effort", (str,), where)
    key = "reasoning_effort"
    reasoning = get_field(body, "reasoning", (dict,), where)
    if effort is None and reasoning:
        effort = get_field(reasoning, "effort", (str,), "reasoning")
        where, key = "reasoning", "effort"
    if effort is None:
        return None
    if effort not in EFFORT:
        raise refuse(where, key, f"{effort[:40]!r} is not valid")
    return EFFORT[effort]


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise InvalidRequest(f"{where} must be an object", param=where)
        check_fields(msg, _MESSAGE_FIELDS, where)
        role = (get_field(msg, "role", (str,), where) or "").lower()
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise refuse(where, "role", f"{role[:40]!r} is not valid")
        text, images = _content(msg.get("content"), where)
        native: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": text,
        }
        if images:
            native["images"] = images
        thinking = [
            get_field(msg, key, (str,), where)
            for key in ("reasoning", "reasoning_content", "thinking")
        ]
        if any(thinking):
            native["thinking"] = next(t for t in thinking if t)
        get_field(msg, "refusal", (str,), where)
        calls = get_field(msg, "tool_calls", (list,), where)
        if calls:
            native["tool_calls"] = native_tool_calls(calls, where, names)
        call_id = get_field(msg, "tool_call_id", (str,), where)
        name = get_field(msg, "name", (str,), where)
        if role == "tool":
            name = name or names.get(call_id or "")
            if name:
                native["tool_name"] = name
            if call_id:
                native["tool_call_id"] = call_id
        out.append(native)
    return out


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    """Text and base64 images of one message's `content` (string or part list)."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise refuse(where, "content", "must be a string or a list of parts")
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "input_text", "refusal"):
            key = "refusal" if kind == "refusal" else "text"
            texts.append(get_field(part, key, (str,), at) or "")
        elif kind == "image_url":
            url = get_field(part, "image_url", (dict, str), at)
            if isinstance(url, Mapping):
                url = get_field(url, "url", (str,), f"{at}.image_url")
            images.append(image_data(url or "", at))
        else:
            shown = repr(kind)[:40]
            raise InvalidRequest(
                f"{at}: part type {shown} is not supported", param=f"{at}.type"
            )
    return "\n".join(texts), images


def image_data(url: str, where: str) -> str:
    match = _DATA_URL.match(url)
    if not match:
        raise refuse(
            where,
            "image_url",
            "must be a base64 data: URL (png, jpeg, webp, gif); "
            "remote URLs are never fetched",
        )
    data = match.group(2).strip()
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as ex:
        raise refuse(where, "image_url", f"is not valid base64 ({ex})") from ex
    return data


def native_tool_calls(
    calls: Any, where: str, names: dict[str, str]
) -> list[dict[str, Any]]:
    out = []
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(
                f"{at}.function.name is required", param=f"{at}.function.name"
            )
        args = get_field(fn, "arguments", (str, dict), f"{at}.function") or "{}"
        if isinstance(args, str):
            # Parsed as strictly as a request body (depth, duplicates, NaN).
            where_args = f"{at}.function.arguments"
            try:
                args = parse(args, where_args)
            except InvalidRequest as ex:
                inner = f"{where_args}.{ex.param}" if ex.param else where_args
                raise InvalidRequest(
                    f"{at}: invalid tool call arguments ({ex.message})", param=inner
                ) from ex
        if not isinstance(args, Mapping):
            raise refuse(f"{at}.function", "arguments", "must be a JSON object")
        native: dict[str, Any] = {
            "function": {"index": k, "name": fn["name"], "arguments": dict(args)}
        }
        call_id = get_field(call, "id", (str,), at)
        if call_id:
            native["id"] = call_id
            names[call_id] = fn["name"]
        out.append(native)
    return out
