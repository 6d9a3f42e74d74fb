"""Non-streaming replies, error bodies, SSE framing and /v1/models objects."""

from __future__ import annotations

import base64
import json
import re
import secrets
import struct
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from herd.router.convert.toolchoice import ToolPlan, settle

SSE_CONTENT_TYPE = "text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"
FINGERPRINT = "fp_ollama"

JSON_COMPACT = {"separators": (",", ":"), "ensure_ascii": False}


def new_id(prefix: str) -> str:
    """A fresh completion id such as `chatcmpl-3f9a…` (unique, unlike Ollama's)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def created_of(native: Mapping[str, Any], now: float | None = None) -> int:
    """Unix seconds of a native `created_at` (RFC 3339, ns precision), else now."""
    stamp = native.get("created_at")
    if isinstance(stamp, str):
        text = re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))
        try:
            return int(datetime.fromisoformat(text).timestamp())
        except ValueError:
            pass
    return int(now if now is not None else time.time())


def usage(native: Mapping[str, Any]) -> dict[str, int]:
    prompt = int(native.get("prompt_eval_count") or 0)
    completion = int(native.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason(native: Mapping[str, Any], tool_calls: bool) -> str | None:
    reason = native.get("done_reason") or None
    if tool_calls and reason in (None, "stop"):
        return "tool_calls"
    return reason


def openai_tool_calls(calls: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Native tool calls (arguments as objects) -> OpenAI (arguments as strings)."""
    out = []
    for k, call in enumerate(calls):
        fn = call.get("function") or {}
        out.append(
            {
                "id": call.get("id") or "call_" + secrets.token_hex(4),
                "index": fn.get("index", k),
                "type": "function",
                "function": {
                    "name": fn.get("name", ""),
                    "arguments": json.dumps(fn.get("arguments") or {}, **JSON_COMPACT),
                },
            }
        )
    return out


def logprobs_of(native: Mapping[str, Any]) -> dict[str, Any] | None:
    items = native.get("logprobs")
    return {"content": list(items)} if items else None


def chat_response(
    native: Mapping[str, Any],
    model: str,
    *,
    id: str | None = None,
    now: float | None = None,
    plan: ToolPlan | None = None,
) -> dict[str, Any]:
    """A non-streaming /api/chat reply as a `chat.completion` object (with
    `plan`, the tool-call demands checked: see herd.router.convert.toolchoice)."""
    msg = native.get("message") or {}
    if plan is not None and plan.active:
        msg = settle(msg, native.get("done_reason"), plan)
    message: dict[str, Any] = {"role": "assistant", "content": msg.get("content", "")}
    if msg.get("thinking"):
        # Ollama's /v1 says `reasoning`; DeepSeek-style clients read
        # `reasoning_content`: both carry the thinking.
        message["reasoning"] = message["reasoning_content"] = msg["thinking"]
    calls = msg.get("tool_calls") or []
    if calls:
        message["tool_calls"] = openai_tool_calls(calls)
    choice = {
        "index": 0,
        "message": message,
        "logprobs": logprobs_of(native),
        "finish_reason": finish_reason(native, bool(calls)),
    }
    return {
        "id": id or new_id("chatcmpl"),
        "object": "chat.completion",
        "created": created_of(native, now),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": usage(native),
    }


def completion_response(
    native: Mapping[str, Any],
    model: str,
    *,
    id: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """A non-streaming /api/generate reply as a `text_completion` object."""
    choice = {
        "text": native.get("response", ""),
        "index": 0,
        "logprobs": logprobs_of(native),
        "finish_reason": finish_reason(native, False),
    }
    return {
        "id": id or new_id("cmpl"),
        "object": "text_completion",
        "created": created_of(native, now),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": usage(native),
    }


def embedding_response(
    native: Mapping[str, Any], model: str, encoding_format: str = "float"
) -> dict[str, Any]:
    """An /api/embed reply as an OpenAI embedding list (float or base64 float32)."""
    data = []
    for i, vector in enumerate(native.get("embeddings") or []):
        value: Any = vector
        if encoding_format == "base64":
            raw = struct.pack(f"<{len(vector)}f", *vector)
            value = base64.b64encode(raw).decode("ascii")
        data.append({"object": "embedding", "embedding": value, "index": i})
    tokens = int(native.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model_object(name: str, created: int) -> dict[str, Any]:
    """One `model` object; `owned_by` is the namespace (`library` for short names)."""
    parts = name.split("/")
    owner = parts[-2] if len(parts) >= 2 else "library"
    return {"id": name, "object": "model", "created": int(created), "owned_by": owner}


def models_list(entries: Iterable[tuple[str, int]]) -> dict[str, Any]:
    """`/v1/models` from (name, created) pairs: declared models and their aliases."""
    return {"object": "list", "data": [model_object(n, c) for n, c in entries]}


def sse_event(obj: Any) -> bytes:
    """One SSE event: `data: <compact json>` and a blank line (a lone
    surrogate, which UTF-8 cannot carry, is written as its JSON escape)."""
    try:
        data = json.dumps(obj, **JSON_COMPACT).encode()
    except UnicodeEncodeError:
        data = json.dumps(obj, separators=(",", ":")).encode()
    return b"data: " + data + b"\n\n"


def error_body(
    message: str,
    kind: str = "server_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_from_native(status: int, body: bytes) -> dict[str, Any]:
    """A node's `{"error": "..."}` reply in OpenAI's shape, typed by status."""
    try:
        message = json.loads(body).get("error") or ""
    except (ValueError, AttributeError, RecursionError):
        message = body.decode("utf-8", "replace").strip()
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(
        status, "api_error"
    )
    return error_body(str(message) or f"upstream status {status}", kind)
