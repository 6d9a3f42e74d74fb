"""Ollama -> OpenAI conversion, for OpenAI-compatible nodes: pure functions, no I/O.

The reverse of the rest of this package. An Ollama-API client's request to a
model served by an `api: openai` node (vLLM, llama-server, LocalAI, ...) is
rewritten to the OpenAI API, and the node's answer (JSON or SSE) back to
Ollama's shapes, so the client cannot tell. Every field is carried or refused
with a 400 naming it; only options that size the runtime (num_ctx, num_gpu,
...) and keep_alive are dropped, because an OpenAI server fixes those itself.

    request(path, body, node_model) -> Outgoing     the OpenAI path and body
    reply(path, answer, model) -> dict              non-streaming answer
    SseToNdjson(path, model).feed(line) -> list[bytes]; .end() -> list[bytes]
    error_message(body) -> str                      an OpenAI error's message
    show(model_name, kind) -> dict                  /api/show, answered locally
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from herd.errors import InvalidRequest

#: Native routes an OpenAI node can serve, and where each goes.
PATHS = {
    "/api/chat": "/v1/chat/completions",
    "/api/generate": "/v1/chat/completions",
    "/api/embed": "/v1/embeddings",
    "/api/embeddings": "/v1/embeddings",
}
#: Options that size the runtime, not the answer: an OpenAI server fixes them.
RUNTIME_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "num_batch",
        "num_keep",
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
    }
)
#: option -> OpenAI request field (top_k and min_p are extensions vLLM,
#: llama-server and LocalAI read).
OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "top_k": "top_k",
    "min_p": "min_p",
}
_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "tools",
        "format",
        "options",
        "stream",
        "keep_alive",
        "think",
        "logprobs",
        "top_logprobs",
    }
)
_GENERATE_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "system",
        "images",
        "format",
        "options",
        "stream",
        "keep_alive",
        "think",
        "raw",
    }
)
_EMBED_FIELDS = frozenset(
    {"model", "input", "truncate", "dimensions", "options", "keep_alive"}
)
_EMBEDDINGS_FIELDS = frozenset({"model", "prompt", "options", "keep_alive"})
_MESSAGE_FIELDS = frozenset(
    {"role", "content", "images", "tool_calls", "tool_name", "tool_call_id", "thinking"}
)
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop"}


@dataclass(frozen=True)
class Outgoing:
    """The request as the OpenAI node gets it."""

    path: str
    body: dict[str, Any]


def _refuse(field: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{field}' {why} (the model is served by an OpenAI-compatible node)",
        param=field,
    )


def _only(body: Mapping[str, Any], allowed: frozenset[str], where: str = "") -> None:
    for key in body:
        if key not in allowed:
            raise _refuse(where + key, "cannot be carried to this model's node")


def image_url(data: Any, field: str) -> dict[str, Any]:
    """An Ollama image (plain base64) as an OpenAI `image_url` content part."""
    if not isinstance(data, str):
        raise _refuse(field, "must be base64 strings")
    head = data[:8]
    mime = "image/png"
    if head.startswith("/9j/"):
        mime = "image/jpeg"
    elif head.startswith("UklGR"):
        mime = "image/webp"
    elif head.startswith("R0lGOD"):
        mime = "image/gif"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _options(options: Any, out: dict[str, Any]) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise _refuse("options", "must be an object")
    for key, value in options.items():
        if key in RUNTIME_OPTIONS:
            continue
        target = OPTION_FIELDS.get(key)
        if target is None:
            raise _refuse(f"options.{key}", "cannot be carried")
        if key == "num_predict" and isinstance(value, int) and value < 0:
            continue  # -1/-2: as long as it takes, which is the OpenAI default
        out[target] = value


def _format(fmt: Any, out: dict[str, Any]) -> None:
    if fmt is None or fmt == "":
        return
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt, "strict": True},
        }
    else:
        raise _refuse("format", 'must be "json" or a JSON schema object')


def _think(think: Any, out: dict[str, Any]) -> None:
    if isinstance(think, str) and think:
        out["reasoning_effort"] = think
    elif think is not None and not isinstance(think, bool):
        raise _refuse("think", "must be true, false, or low/medium/high")


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise _refuse(where, "must be a list")
    out = []
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _refuse(f"{where}[{k}].function.name", "is required")
        args = fn.get("arguments") or {}
        out.append(
            {
                "id": call.get("id") or f"call_{k}_{fn['name']}",
                "type": "function",
                "function": {
                    "name": fn["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
        )
    return out


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise _refuse("messages", "must be a list")
    out: list[dict[str, Any]] = []
    pending: dict[str, str] = {}  # tool name -> id of its last unanswered call
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _refuse(where, "must be an object")
        _only(message, _MESSAGE_FIELDS, where + ".")
        role = message.get("role")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise _refuse(where + ".content", "must be a string")
        item: dict[str, Any] = {"role": role}
        images = message.get("images") or []
        if images:
            if not isinstance(images, list):
                raise _refuse(where + ".images", "must be a list")
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
            parts += [image_url(img, f"{where}.images") for img in images]
            item["content"] = parts
        else:
            item["content"] = content
        if message.get("tool_calls"):
            calls = _tool_calls(message["tool_calls"], where + ".tool_calls")
            item["tool_calls"] = calls
            for call in calls:
                pending[call["function"]["name"]] = call["id"]
        if role == "tool":
            call_id = message.get("tool_call_id") or pending.get(
                str(message.get("tool_name") or "")
            )
            if not call_id and len(pending) == 1:
                call_id = next(iter(pending.values()))
            if not call_id:
                raise _refuse(
                    where + ".tool_name", "must name the tool call this answers"
                )
            item["tool_call_id"] = call_id
        out.append(item)
    return out


def request(path: str, body: Mapping[str, Any], node_model: str) -> Outgoing:
    """The OpenAI request for a native one (`node_model`: the node's model id)."""
    stream = body.get("stream", True) is not False
    if path in ("/api/embed", "/api/embeddings"):
        _only(body, _EMBED_FIELDS if path == "/api/embed" else _EMBEDDINGS_FIELDS)
        text = body.get("input") if path == "/api/embed" else body.get("prompt")
        if not isinstance(text, str | list):
            field = "input" if path == "/api/embed" else "prompt"
            raise _refuse(field, "must be a string or a list of strings")
        out: dict[str, Any] = {
            "model": node_model,
            "input": text,
            "encoding_format": "float",
        }
        if body.get("dimensions") is not None:
            out["dimensions"] = body["dimensions"]
        return Outgoing("/v1/embeddings", out)
    out = {"model": node_model, "stream": stream}
    if stream:
        out["stream_options"] = {"include_usage": True}
    if path == "/api/chat":
        _only(body, _CHAT_FIELDS)
        out["messages"] = _messages(body.get("messages") or [])
        if body.get("tools"):
            out["tools"] = body["tools"]
    elif path == "/api/generate":
        _only(body, _GENERATE_FIELDS)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise _refuse("prompt", "must be a string")
        if body.get("raw"):
            if body.get("images") or body.get("system"):
                raise _refuse("raw", "cannot be combined with images or system")
            out["prompt"] = prompt
            path_out = "/v1/completions"
            _options(body.get("options"), out)
            _format(body.get("format"), out)
            return Outgoing(path_out, out)
        messages: list[dict[str, Any]] = []
        if body.get("system"):
            messages.append({"role": "system", "content": str(body["system"])})
        user = {"role": "user", "content": prompt}
        if body.get("images"):
            user["images"] = body["images"]
        messages.append(user)
        out["messages"] = _messages(messages)
    else:
        raise _refuse("model", f"cannot be used on {path}")
    _options(body.get("options"), out)
    _format(body.get("format"), out)
    _think(body.get("think"), out)
    for key in ("logprobs", "top_logprobs"):
        if body.get(key) is not None:
            out[key] = body[key]
    return Outgoing("/v1/chat/completions", out)


def created_at(now: float | None = None) -> str:
    """RFC 3339 UTC, as Ollama stamps its answers."""
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + (
        f".{int(now % 1 * 1e9):09d}Z"
    )


def _native_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as a JSON string) -> Ollama's (an object)."""
    out = []
    for k, call in enumerate(calls or ()):
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        parsed = json.loads(args) if isinstance(args, str) else args
        if not isinstance(parsed, dict):
            raise ValueError("tool call arguments are not a JSON object")
        entry: dict[str, Any] = {
            "function": {"index": k, "name": fn.get("name", ""), "arguments": parsed}
        }
        if call.get("id"):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def _frame(
    chat: bool, model: str, text: str, thinking: str | None, done: bool
) -> dict[str, Any]:
    frame: dict[str, Any] = {"model": model, "created_at": created_at()}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        frame["message"] = message
    else:
        frame["response"] = text
        if thinking:
            frame["thinking"] = thinking
    frame["done"] = done
    return frame


def _counts(frame: dict[str, Any], usage: Any) -> None:
    usage = usage if isinstance(usage, dict) else {}
    frame["total_duration"] = 0
    frame["prompt_eval_count"] = int(usage.get("prompt_tokens") or 0)
    frame["eval_count"] = int(usage.get("completion_tokens") or 0)


def _thinking_of(part: Mapping[str, Any]) -> str | None:
    value = part.get("reasoning_content") or part.get("reasoning")
    return value if isinstance(value, str) and value else None


def reply(path: str, answer: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A non-streaming OpenAI answer as the native one. Raises ValueError on
    an answer that is not what an OpenAI server sends."""
    if path == "/api/embed" or path == "/api/embeddings":
        data = sorted(answer["data"], key=lambda d: d.get("index", 0))
        vectors = [d["embedding"] for d in data]
        if path == "/api/embeddings":
            return {"embedding": vectors[0] if vectors else []}
        usage = answer.get("usage") or {}
        return {
            "model": model,
            "embeddings": vectors,
            "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
        }
    choice = (answer.get("choices") or [None])[0]
    if not isinstance(choice, dict):
        raise ValueError("answer has no choices")
    message = choice.get("message") or {}
    text = message.get("content") if "message" in choice else choice.get("text")
    frame = _frame(
        path == "/api/chat", model, text or "", _thinking_of(message), done=True
    )
    calls = _native_calls(message.get("tool_calls"))
    if calls and path == "/api/chat":
        frame["message"]["tool_calls"] = calls
    frame["done_reason"] = _FINISH.get(choice.get("finish_reason") or "stop", "stop")
    _counts(frame, answer.get("usage"))
    return frame


class SseToNdjson:
    """An OpenAI SSE stream, line by line, as native NDJSON lines.

    Tool call fragments are gathered and sent in one line before the final
    one (Ollama sends whole calls); the final line carries done_reason and the
    usage the node reported (asked for with stream_options.include_usage).
    """

    def __init__(self, path: str, model: str):
        self.chat = path == "/api/chat"
        self.model = model
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.usage: Any = None
        self.done = False

    def feed(self, line: bytes) -> list[bytes]:
        line = line.strip()
        if not line.startswith(b"data:") or self.done:
            return []  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == b"[DONE]":
            return self.end()
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise ValueError("SSE event is not a JSON object")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            self.done = True
            return [_line({"error": str(message)})]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") if "delta" in choice else choice.get("text")
            thinking = _thinking_of(delta)
            for call in delta.get("tool_calls") or ():
                slot = self.calls.setdefault(
                    int(call.get("index") or 0), {"name": "", "arguments": ""}
                )
                fn = call.get("function") or {}
                slot["id"] = call.get("id") or slot.get("id")
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if text or thinking:
                frame = _frame(self.chat, self.model, text or "", thinking, False)
                out.append(_line(frame))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> list[bytes]:
        """The closing lines; [] when the node never said it had finished."""
        if self.done or (self.finish is None and self.usage is None):
            return []
        self.done = True
        out = []
        if self.calls and self.chat:
            calls = [
                {
                    "id": c.get("id"),
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for _, c in sorted(self.calls.items())
            ]
            frame = _frame(True, self.model, "", None, False)
            frame["message"]["tool_calls"] = _native_calls(calls)
            out.append(_line(frame))
        final = _frame(self.chat, self.model, "", None, True)
        final["done_reason"] = _FINISH.get(self.finish or "stop", "stop")
        _counts(final, self.usage)
        out.append(_line(final))
        return out


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def error_message(body: bytes) -> str:
    """The message of an OpenAI (or any) error body, for a native `{"error"}`."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip() or "node error"
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "node error")
    if isinstance(error, str):
        return error
    if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        return doc["detail"]  # FastAPI servers (vLLM, speaches)
    return "node error"


def show(model_name: str, kind: str) -> dict[str, Any]:
    """What /api/show answers for a model on an OpenAI node (it has no such
    route): the name and what the model can do, by its manifest kind."""
    capabilities = {
        "chat": ["completion", "tools", "vision"],
        "embed": ["embedding"],
        "image": ["image"],
        "transcribe": ["audio"],
    }[kind]
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": {"format": "openai", "family": "", "parameter_size": ""},
        "model_info": {},
        "capabilities": capabilities,
        "modified_at": "1970-01-01T00:00:00Z",
    }
