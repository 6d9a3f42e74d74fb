"""Ollama NDJSON chunk streams -> OpenAI SSE chunk streams (reference §2.2, §2.3)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from herd.router.convert.response import (
    FINGERPRINT,
    SSE_DONE,
    error_body,
    finish_reason,
    logprobs_of,
    new_id,
    openai_tool_calls,
    sse_event,
    usage,
)
from herd.router.convert.toolchoice import NotACall, ToolPlan, settle


class _Stream:
    """Shared state of one OpenAI stream: one id and `created` for every chunk."""

    prefix = "chatcmpl"
    object = "chat.completion.chunk"

    def __init__(
        self,
        model: str,
        include_usage: bool = False,
        *,
        id: str | None = None,
        now: float | None = None,
        request: Any = None,
    ) -> None:
        #: The converted request (its `plan`: tool-call demands to enforce).
        self.request = request
        self.model = model
        self.include_usage = include_usage
        self.id = id or new_id(self.prefix)
        self.created = int(now if now is not None else time.time())
        self.done = False

    def _chunk(self, choices: list[Any], **extra: Any) -> bytes:
        obj = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            **extra,
        }
        return sse_event(obj)

    def _end(self, native: Mapping[str, Any]) -> bytes:
        self.done = True
        tail = self._chunk([], usage=usage(native)) if self.include_usage else b""
        return tail + SSE_DONE

    def fail(self, message: str) -> bytes:
        """The stream broke after it started: an SSE error event, then [DONE]."""
        if self.done:
            return b""
        self.done = True
        return sse_event(error_body(message, "server_error")) + SSE_DONE

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        if self.done:
            return b""
        if chunk.get("error"):
            return self.fail(str(chunk["error"]))
        return self._feed(chunk)

    def _feed(self, chunk: Mapping[str, Any]) -> bytes:
        raise NotImplementedError


class ChatStream(_Stream):
    """/api/chat NDJSON chunks -> `chat.completion.chunk` SSE events (§2.2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._role_sent = False
        self._tool_calls = 0
        self._text = ""
        self._calls: list[Any] = []

    def _delta(self, delta: dict[str, Any], logprobs: Any = None) -> bytes:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": None,
        }
        return self._chunk([choice])

    def _feed(self, chunk: Mapping[str, Any]) -> bytes:
        msg = chunk.get("message") or {}
        plan = getattr(self.request, "plan", None)
        if plan is not None and plan.active:
            msg = self._held(msg, chunk, plan)
            if msg is None:
                return self.fail(self._refusal)
        out = b""
        if msg.get("thinking"):
            thought = msg["thinking"]
            delta = {"content": "", "reasoning": thought, "reasoning_content": thought}
            out += self._delta(delta)
        calls = msg.get("tool_calls") or []
        if msg.get("content") or calls:
            delta: dict[str, Any] = {"content": msg.get("content", "")}
            if calls:
                converted = openai_tool_calls(calls)
                for call in converted:
                    call["index"] = self._tool_calls
                    self._tool_calls += 1
                delta["tool_calls"] = converted
            out += self._delta(delta, logprobs_of(chunk))
        if not chunk.get("done"):
            return out
        if not self._role_sent:
            out += self._delta({"content": ""})
        reason = finish_reason(chunk, self._tool_calls > 0) or "stop"
        finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
        return out + self._chunk([finish]) + self._end(chunk)

    _refusal = ""

    def _held(
        self, msg: Mapping[str, Any], chunk: Mapping[str, Any], plan: ToolPlan
    ) -> dict[str, Any] | None:
        """`msg` with the tool-call demands applied: a forced call's text is
        held back until the end, then settled into the call; only the first
        call passes when one is allowed. None: the reply broke the demand."""
        out = {k: v for k, v in msg.items() if k not in ("content", "tool_calls")}
        if plan.forced:
            self._text += msg.get("content") or ""
            self._calls += msg.get("tool_calls") or []
            if not chunk.get("done"):
                return out
            held = {"content": self._text, "tool_calls": self._calls}
            try:
                settled = settle(held, chunk.get("done_reason"), plan)
            except NotACall as ex:
                self._refusal = ex.message
                return None
            return {**out, **settled}
        calls = msg.get("tool_calls") or []
        if self._tool_calls:
            calls = []
        out["content"] = msg.get("content") or ""
        if calls:
            out["tool_calls"] = calls[:1]
        return out


class CompletionStream(_Stream):
    """/api/generate NDJSON chunks -> `text_completion` SSE events (§2.3).

    The last content chunk carries `finish_reason` (no separate finish chunk);
    with include_usage a final `choices: []` chunk carries the usage.
    """

    prefix = "cmpl"
    object = "text_completion"

    def _feed(self, chunk: Mapping[str, Any]) -> bytes:
        done = bool(chunk.get("done"))
        if not done and not chunk.get("response"):
            return b""
        choice = {
            "text": chunk.get("response", ""),
            "index": 0,
            "logprobs": logprobs_of(chunk),
            "finish_reason": (finish_reason(chunk, False) or "stop") if done else None,
        }
        out = self._chunk([choice])
        return out + self._end(chunk) if done else out
