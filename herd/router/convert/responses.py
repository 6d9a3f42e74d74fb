"""/v1/responses (OpenAI's Responses API) -> /api/chat, and the reply back.

Carried: `instructions` (a system message), `input` (a string, or items:
messages with input_text/output_text/input_image parts, `function_call`,
`function_call_output` and `reasoning` items), function `tools`,
`tool_choice`, `parallel_tool_calls` (emulated, see toolchoice),
`text.format` (json_schema / json_object -> Ollama `format`), `reasoning.effort`
(-> `think`), `max_output_tokens` (-> `num_predict`), temperature, top_p.

Refused with a 400 naming the field: hosted tools (web_search, file_search,
code_interpreter, ...), `previous_response_id`, `conversation`,
`item_reference` items and `background`: each needs state kept on the server,
and herd keeps no prompts. `store` is accepted (OpenAI's default is true) but
nothing is stored; replies say `"store": false`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from herd.errors import InvalidRequest
from herd.router.api.body import parse
from herd.router.convert.chat import (
    EFFORT,
    image_data,
    tool,
    tool_plan,
)
from herd.router.convert.request import (
    Converted,
    check_fields,
    get_field,
    refuse,
    require_model,
    sampling_options,
)
from herd.router.convert.toolchoice import constrain

WHERE = "responses"

_FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "truncation",
        "include",
        "max_tool_calls",
        "prompt_cache_retention",
        "previous_response_id",
        "conversation",
        "background",
    }
)
#: Need a server-side store of earlier responses or conversations.
_STATEFUL = ("previous_response_id", "conversation")
_INCLUDABLE = frozenset({"reasoning.encrypted_content", "message.output_text.logprobs"})
_ROLES = ("user", "system", "developer", "assistant")


def responses_request(body: Any) -> Converted:
    """Turn a /v1/responses body into an /api/chat body."""
    body = require_model(body, WHERE)
    check_fields(body, _FIELDS, WHERE)
    for key in _STATEFUL:
        if body.get(key) is not None:
            raise refuse(
                WHERE,
                key,
                "is not supported: herd keeps no responses or conversations "
                "(send the whole conversation in 'input')",
            )
    if get_field(body, "background", (bool,), WHERE):
        raise refuse(WHERE, "background", "true is not supported")
    stream = bool(get_field(body, "stream", (bool,), WHERE))
    opts = get_field(body, "stream_options", (dict,), WHERE) or {}
    check_fields(opts, frozenset({"include_obfuscation"}), "stream_options")
    truncation = get_field(body, "truncation", (str,), WHERE)
    if truncation not in (None, "auto", "disabled"):
        raise refuse(WHERE, "truncation", "must be 'auto' or 'disabled'")
    get_field(body, "max_tool_calls", (int,), WHERE)
    include = get_field(body, "include", (list,), WHERE) or []
    for i, item in enumerate(include):
        if not isinstance(item, str) or item not in _INCLUDABLE:
            raise refuse(WHERE, f"include[{i}]", f"{str(item)[:60]!r} is not supported")
    limits = {"max_tokens": get_field(body, "max_output_tokens", (int,), WHERE)}
    options = sampling_options(
        {k: body.get(k) for k in ("temperature", "top_p")} | limits, WHERE
    )
    messages: list[dict[str, Any]] = []
    instructions = get_field(body, "instructions", (str,), WHERE)
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages += input_messages(body.get("input"))
    if not messages:
        raise refuse(WHERE, "input", "is required (a string or a list of items)")
    native: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "stream": stream,
        "options": options,
    }
    tools = [
        _tool(t, i)
        for i, t in enumerate(get_field(body, "tools", (list,), WHERE) or ())
    ]
    plan = tool_plan(body, tools, WHERE)
    if tools and body.get("tool_choice") != "none":
        native["tools"] = tools
    fmt = _text_format(get_field(body, "text", (dict,), WHERE))
    if fmt is not None:
        if plan.forced:
            raise refuse(
                WHERE, "text.format", "cannot be combined with a forced tool_choice"
            )
        native["format"] = fmt
    constrain(native, plan)
    reasoning = get_field(body, "reasoning", (dict,), WHERE)
    if reasoning:
        check_fields(
            reasoning, frozenset({"effort", "summary", "generate_summary"}), "reasoning"
        )
        effort = get_field(reasoning, "effort", (str,), "reasoning")
        if effort is not None:
            if effort not in EFFORT:
                raise refuse("reasoning", "effort", f"{effort[:40]!r} is not valid")
            native["think"] = EFFORT[effort]
    if "message.output_text.logprobs" in include:
        native["logprobs"] = True
    echo = {k: body.get(k) for k in _ECHOED}
    return Converted(native, body["model"], stream, plan=plan, echo=echo)


_ECHOED = (
    "instructions",
    "max_output_tokens",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "tool_choice",
    "tools",
    "text",
    "reasoning",
    "metadata",
    "truncation",
    "user",
)


def _tool(spec: Any, index: int) -> dict[str, Any]:
    """A Responses function tool (flat: name, parameters) as a native tool."""
    where = f"tools[{index}]"
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if kind != "function":
        raise InvalidRequest(
            f"{where}.type: {str(kind)[:40]!r} is not supported; herd runs no "
            "hosted tools (web search, file search, code interpreter...), only "
            "tools of type 'function'",
            param=f"{where}.type",
        )
    check_fields(
        spec, frozenset({"type", "name", "description", "parameters", "strict"}), where
    )
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise refuse(where, "name", "is required (a string)")
    return tool(
        {
            "type": "function",
            "function": {k: v for k, v in spec.items() if k not in ("type", "strict")},
        },
        index,
    )


def _text_format(text: Mapping[str, Any] | None) -> Any:
    if not text:
        return None
    check_fields(text, frozenset({"format", "verbosity"}), "text")
    if get_field(text, "verbosity", (str,), "text") not in (None, "medium"):
        raise refuse("text", "verbosity", "cannot be honoured (only 'medium')")
    fmt = get_field(text, "format", (dict,), "text")
    if not fmt:
        return None
    kind = get_field(fmt, "type", (str,), "text.format")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = get_field(fmt, "schema", (dict,), "text.format")
        if schema is None:
            raise refuse("text.format", "schema", "is required (an object)")
        return dict(schema)
    raise refuse("text.format", "type", f"{str(kind)[:40]!r} is not known")


def input_messages(items: Any) -> list[dict[str, Any]]:
    """The `input` (a string or a list of items) as native chat messages."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise refuse(WHERE, "input", "must be a string or a list of items")
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call_id -> function name
    thinking = ""
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"{where} must be an object", param=where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where, names)
            last = out[-1] if out else None
            if (
                last
                and last["role"] == "assistant"
                and (last.get("tool_calls") or not last["content"])
            ):
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(_call_output(item, where, names))
        elif kind == "reasoning":
            thinking += _reasoning_text(item, where)
            continue
        elif kind == "item_reference":
            raise refuse(
                where,
                "type",
                "'item_reference' needs a stored response; herd keeps none",
            )
        else:
            raise refuse(where, "type", f"{str(kind)[:40]!r} is not supported")
        if thinking and out[-1]["role"] == "assistant":
            out[-1]["thinking"] = thinking
        thinking = ""
    for msg in out:
        for j, call in enumerate(msg.get("tool_calls") or ()):
            call["function"]["index"] = j
    return out


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    check_fields(
        item, frozenset({"type", "role", "content", "id", "status", "phase"}), where
    )
    role = get_field(item, "role", (str,), where)
    if role not in _ROLES:
        raise refuse(where, "role", f"{str(role)[:40]!r} is not valid")
    content = item.get("content")
    if isinstance(content, str):
        text, images = content, []
    elif isinstance(content, list):
        text, images = _parts(content, where)
    else:
        raise refuse(where, "content", "must be a string or a list of parts")
    native: dict[str, Any] = {
        "role": "system" if role == "developer" else role,
        "content": text,
    }
    if images:
        native["images"] = images
    return native


def _parts(parts: list[Any], where: str) -> tuple[str, list[str]]:
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(parts):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text"):
            texts.append(get_field(part, "text", (str,), at) or "")
        elif kind == "refusal":
            texts.append(get_field(part, "refusal", (str,), at) or "")
        elif kind == "input_image":
            if part.get("file_id"):
                raise refuse(
                    at, "file_id", "is not supported (send a base64 data: URL)"
                )
            url = get_field(part, "image_url", (str,), at) or ""
            images.append(image_data(url, at))
        else:
            raise InvalidRequest(
                f"{at}: part type {str(kind)[:40]!r} is not supported",
                param=f"{at}.type",
            )
    return "\n".join(texts), images


def _function_call(
    item: Mapping[str, Any], where: str, names: dict[str, str]
) -> dict[str, Any]:
    check_fields(
        item,
        frozenset(
            {"type", "call_id", "name", "arguments", "id", "status", "namespace"}
        ),
        where,
    )
    call_id = get_field(item, "call_id", (str,), where)
    if not call_id:
        raise refuse(where, "call_id", "is required")
    name = get_field(item, "name", (str,), where)
    if not name:
        raise refuse(where, "name", "is required")
    text = get_field(item, "arguments", (str,), where) or "{}"
    try:
        # Parsed as strictly as a request body (depth, duplicates, NaN).
        args = parse(text, f"{where}.arguments")
    except InvalidRequest as ex:
        raise InvalidRequest(
            f"{where}: invalid function call arguments ({ex.message})",
            param=f"{where}.arguments",
        ) from ex
    if not isinstance(args, dict):
        raise refuse(where, "arguments", "must be a JSON object")
    names[call_id] = name
    return {"id": call_id, "function": {"index": 0, "name": name, "arguments": args}}


def _call_output(
    item: Mapping[str, Any], where: str, names: dict[str, str]
) -> dict[str, Any]:
    check_fields(item, frozenset({"type", "call_id", "output", "id", "status"}), where)
    call_id = get_field(item, "call_id", (str,), where)
    if not call_id:
        raise refuse(where, "call_id", "is required")
    output = get_field(item, "output", (str, list), where)
    if isinstance(output, list):
        output, images = _parts(output, f"{where}.output")
        if images:
            raise refuse(where, "output", "images in a tool result are not supported")
    native = {"role": "tool", "content": output or "", "tool_call_id": call_id}
    if call_id in names:
        native["tool_name"] = names[call_id]
    return native


def _reasoning_text(item: Mapping[str, Any], where: str) -> str:
    check_fields(
        item,
        frozenset({"type", "id", "summary", "content", "encrypted_content", "status"}),
        where,
    )
    texts = []
    for key in ("content", "summary"):
        for part in get_field(item, key, (list,), where) or ():
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        if texts:
            break
    return "\n".join(texts)
