"""/v1/chat/completions request -> /api/chat body (shared reference §2.2)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from herd.errors import InvalidRequest
from herd.router.convert.request import (
    Converted,
    check_fields,
    get_field,
    one_choice,
    require_model,
    sampling_options,
    stream_flags,
)

_EFFORT = {
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
        raise InvalidRequest(f"{where}: 'modalities' other than ['text'] unsupported")
    if body.get("parallel_tool_calls") is False:
        raise InvalidRequest(
            f"{where}: 'parallel_tool_calls': false cannot be honoured"
        )
    stream, include_usage = stream_flags(body, where)
    messages = get_field(body, "messages", (list,), where)
    if not messages:
        raise InvalidRequest(f"{where}: 'messages' must be a non-empty list")
    native: dict[str, Any] = {
        "model": body["model"],
        "messages": _messages(messages),
        "stream": stream,
        "options": sampling_options(body, where),
    }
    tools = get_field(body, "tools", (list,), where)
    send_tools = _tool_choice(body.get("tool_choice"), where)
    if tools and send_tools:
        native["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    fmt = _response_format(get_field(body, "response_format", (dict,), where), where)
    if fmt is not None:
        native["format"] = fmt
    think = _think(body, where)
    if think is not None:
        native["think"] = think
    if body.get("logprobs"):
        native["logprobs"] = True
        top = get_field(body, "top_logprobs", (int,), where)
        if top is not None:
            if not 0 <= top <= 20:
                raise InvalidRequest(f"{where}: 'top_logprobs' must be within 0..20")
            native["top_logprobs"] = top
    elif body.get("top_logprobs"):
        raise InvalidRequest(f"{where}: 'top_logprobs' requires 'logprobs': true")
    return Converted(native, body["model"], stream, include_usage)


def _tool_choice(choice: Any, where: str) -> bool:
    """True when tools should be sent; 'none' drops them; forcing a call is refused."""
    if choice is None or choice == "auto":
        return True
    if choice == "none":
        return False
    raise InvalidRequest(
        f"{where}: 'tool_choice' {json.dumps(choice)} cannot be honoured by Ollama "
        "(only 'auto' and 'none')"
    )


def _tool(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(tool, Mapping) or tool.get("type") != "function":
        raise InvalidRequest(f"{where}: only tools of type 'function' are supported")
    fn = tool.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"{where}.function.name is required")
    out = {k: fn[k] for k in ("name", "description", "parameters") if k in fn}
    return {"type": "function", "function": out}


def _response_format(fmt: Mapping[str, Any] | None, where: str) -> Any:
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return "json"
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, Mapping):
            raise InvalidRequest(f"{where}: response_format.json_schema.schema missing")
        return dict(schema)
    raise InvalidRequest(f"{where}: response_format type {fmt.get('type')!r} unknown")


def _think(body: Mapping[str, Any], where: str) -> Any:
    effort = body.get("reasoning_effort")
    reasoning = get_field(body, "reasoning", (dict,), where)
    if effort is None and reasoning:
        effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort not in _EFFORT:
        raise InvalidRequest(f"{where}: 'reasoning_effort' {effort!r} is not valid")
    return _EFFORT[effort]


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise InvalidRequest(f"{where} must be an object")
        check_fields(msg, _MESSAGE_FIELDS, where)
        role = str(msg.get("role", "")).lower()
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise InvalidRequest(f"{where}.role {msg.get('role')!r} is not valid")
        text, images = _content(msg.get("content"), where)
        native: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": text,
        }
        if images:
            native["images"] = images
        thinking = msg.get("reasoning") or msg.get("reasoning_content")
        if thinking or msg.get("thinking"):
            native["thinking"] = thinking or msg.get("thinking")
        if msg.get("tool_calls"):
            native["tool_calls"] = _native_tool_calls(msg["tool_calls"], where, names)
        if role == "tool":
            call_id = msg.get("tool_call_id")
            name = msg.get("name") or names.get(call_id or "")
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
        raise InvalidRequest(f"{where}.content must be a string or a list of parts")
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "input_text", "refusal"):
            texts.append(str(part.get(kind if kind == "refusal" else "text") or ""))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            images.append(_image(str(url or ""), f"{where}.content[{j}]"))
        else:
            raise InvalidRequest(
                f"{where}.content[{j}]: part type {kind!r} is not supported"
            )
    return "\n".join(texts), images


def _image(url: str, where: str) -> str:
    match = _DATA_URL.match(url)
    if not match:
        raise InvalidRequest(
            f"{where}: image_url must be a base64 data: URL (png, jpeg, webp, gif); "
            "remote URLs are never fetched"
        )
    data = match.group(2).strip()
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as ex:
        raise InvalidRequest(f"{where}: image data is not valid base64 ({ex})") from ex
    return data


def _native_tool_calls(
    calls: Any, where: str, names: dict[str, str]
) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be a list")
    out = []
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f"{where}.tool_calls[{k}].function.name is required")
        args = fn.get("arguments") or "{}"
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError as ex:
                raise InvalidRequest(
                    f"{where}.tool_calls[{k}]: invalid tool call arguments"
                ) from ex
        if not isinstance(args, Mapping):
            raise InvalidRequest(
                f"{where}.tool_calls[{k}]: arguments must be an object"
            )
        native: dict[str, Any] = {
            "function": {"index": k, "name": fn["name"], "arguments": dict(args)}
        }
        if call.get("id"):
            native["id"] = call["id"]
            names[call["id"]] = fn["name"]
        out.append(native)
    return out
