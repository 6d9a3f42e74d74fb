"""The Responses API's output items and `response` objects, built from /api/chat.

`responses_reply` turns a whole (non-streaming) native reply into a
`response`; the item builders are shared with the streaming converter
(herd.router.convert.responses_stream). Output items: `reasoning` (the
model's thinking as `reasoning_text`), `message` (`output_text`),
`function_call` (arguments as a JSON string). A reply the node cut at the
output cap is `status: "incomplete"`, reason `max_output_tokens`.

`usage.output_tokens_details.reasoning_tokens`: Ollama reports one
`eval_count` for thinking and answer together. A stream counts the thinking
chunks (one token each); a whole reply has no chunks left to count, so its
thinking tokens are estimated as the thinking text's share (in characters)
of everything the model wrote (`thinking_share`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from herd.router.convert.request import Converted
from herd.router.convert.response import JSON_COMPACT, created_of
from herd.router.convert.toolchoice import ToolPlan, settle


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def reasoning_item(
    text: str, item_id: str, status: str = "completed"
) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": content,
        "status": status,
    }


def text_part(text: str, logprobs: list[Any] | None = None) -> dict[str, Any]:
    return {
        "type": "output_text",
        "text": text,
        "annotations": [],
        "logprobs": logprobs or [],
    }


def message_item(
    text: str,
    item_id: str,
    status: str = "completed",
    logprobs: list[Any] | None = None,
) -> dict[str, Any]:
    content = [text_part(text, logprobs)] if status == "completed" else []
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def call_item(
    call: Mapping[str, Any], item_id: str, status: str = "completed"
) -> dict[str, Any]:
    """A native tool call as a `function_call` output item."""
    fn = call.get("function") or {}
    arguments = fn.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments or {}, **JSON_COMPACT)
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call.get("id") or "call_" + secrets.token_hex(4),
        "name": fn.get("name", ""),
        "arguments": arguments if status == "completed" else "",
        "status": status,
    }


def thinking_share(msg: Mapping[str, Any], output_tokens: int) -> int:
    """Estimated thinking tokens of a whole reply: `output_tokens` split in
    proportion to the characters of the thinking and of the rest (answer text
    and tool calls)."""
    thinking = len(msg.get("thinking") or "")
    if not thinking or output_tokens <= 0:
        return 0
    rest = len(msg.get("content") or "")
    for call in msg.get("tool_calls") or ():
        rest += len(json.dumps(call.get("function") or {}, **JSON_COMPACT))
    return max(1, round(output_tokens * thinking / (thinking + rest)))


def usage_of(native: Mapping[str, Any], reasoning_tokens: int = 0) -> dict[str, Any]:
    prompt = int(native.get("prompt_eval_count") or 0)
    output = int(native.get("eval_count") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, output)},
        "total_tokens": prompt + output,
    }


def response_object(
    c: Converted,
    *,
    id: str,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `response` object echoing the request's settings."""
    echo = c.echo or {}
    reasoning = echo.get("reasoning") or {}
    obj = {
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"}
        if status == "incomplete"
        else None,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": c.model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": {
            "effort": reasoning.get("effort"),
            "summary": reasoning.get("summary"),
        },
        "store": False,
        "temperature": _or(echo.get("temperature"), 1.0),
        "text": echo.get("text") or {"format": {"type": "text"}},
        "tool_choice": echo.get("tool_choice") or "auto",
        "tools": list(echo.get("tools") or ()),
        "top_p": _or(echo.get("top_p"), 1.0),
        "truncation": echo.get("truncation") or "disabled",
        "usage": usage,
        "user": echo.get("user"),
        "metadata": echo.get("metadata") or {},
    }
    if status == "completed":
        obj["completed_at"] = int(time.time())
    return obj


def status_of(native: Mapping[str, Any]) -> str:
    """`incomplete` when the node stopped at the output cap, else `completed`."""
    return "incomplete" if native.get("done_reason") == "length" else "completed"


def responses_reply(native: Mapping[str, Any], c: Converted) -> dict[str, Any]:
    """A non-streaming /api/chat reply as a `response` object."""
    msg = native.get("message") or {}
    plan: ToolPlan | None = c.plan
    if plan is not None and plan.active:
        msg = settle(msg, native.get("done_reason"), plan)
    output: list[dict[str, Any]] = []
    if msg.get("thinking"):
        output.append(reasoning_item(msg["thinking"], new_item_id("rs")))
    if msg.get("content"):
        logprobs = list(native.get("logprobs") or ())
        output.append(
            message_item(msg["content"], new_item_id("msg"), logprobs=logprobs)
        )
    for call in msg.get("tool_calls") or ():
        output.append(call_item(call, new_item_id("fc")))
    return response_object(
        c,
        id=new_item_id("resp"),
        created=created_of(native),
        status=status_of(native),
        output=output,
        usage=usage_of(native, thinking_share(msg, int(native.get("eval_count") or 0))),
    )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value
