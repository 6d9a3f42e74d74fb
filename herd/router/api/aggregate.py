"""Folding a node's NDJSON stream into the one object a non-streaming client expects.

The router always asks nodes to stream /api/chat and /api/generate, even when
the client said `"stream": false`: the first line shows within
`first_byte_timeout_s` whether the node is alive (a silent node is retried
elsewhere instead of holding the request until the request timeout), time to
first token is measured for every request, and a node that breaks midway can
still be replaced, since the client has received nothing yet.

The fold is what Ollama itself does for non-streaming requests (shared
reference §1.1): concatenate `response`/`message.content`, `thinking` and
`logprobs`, collect `tool_calls`, and return the final (`done`) chunk carrying
them. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Fold:
    """Accumulates the chunks of one /api/chat or /api/generate stream."""

    def __init__(self, chat: bool):
        self.chat = chat
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[Any] = []
        self._logprobs: list[Any] = []
        self._role = "assistant"
        self.final: dict[str, Any] | None = None

    def feed(self, chunk: Mapping[str, Any]) -> bool:
        """Take one chunk; True once the final (`done`) chunk arrived."""
        part = (chunk.get("message") or {}) if self.chat else chunk
        text = part.get("content" if self.chat else "response")
        if text:
            self._text.append(text)
        if part.get("thinking"):
            self._thinking.append(part["thinking"])
        if part.get("tool_calls"):
            self._tool_calls.extend(part["tool_calls"])
        if self.chat and part.get("role"):
            self._role = part["role"]
        if chunk.get("logprobs"):
            self._logprobs.extend(chunk["logprobs"])
        if chunk.get("done"):
            self.final = dict(chunk)
            return True
        return False

    def result(self) -> dict[str, Any]:
        """The final chunk with everything accumulated (call once done)."""
        assert self.final is not None, "the stream has not finished"
        out = dict(self.final)
        if self.chat:
            message: dict[str, Any] = {
                **(out.get("message") or {}),
                "role": self._role,
                "content": "".join(self._text),
            }
            if self._thinking:
                message["thinking"] = "".join(self._thinking)
            if self._tool_calls:
                message["tool_calls"] = self._tool_calls
            out["message"] = message
        else:
            out["response"] = "".join(self._text)
            if self._thinking:
                out["thinking"] = "".join(self._thinking)
            if self._tool_calls:
                out["tool_calls"] = self._tool_calls
        if self._logprobs:
            out["logprobs"] = self._logprobs
        return out
