"""/api/chat NDJSON chunks -> the Responses API's typed SSE events.

The order is OpenAI's: `response.created`, `response.in_progress`; for each
output item `response.output_item.added`, its content part
(`response.content_part.added`), the deltas (`response.reasoning_text.delta`
for thinking, `response.output_text.delta` for text,
`response.function_call_arguments.delta` for a call), their `.done` events,
`response.output_item.done`; finally `response.completed` (or
`response.incomplete` when the output cap was reached) with the whole
response. Every event has `event:` and `data:` lines and a `sequence_number`;
there is no `[DONE]`. A node that breaks mid-stream gives an `error` event and
`response.failed`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from herd.router.convert.request import Converted
from herd.router.convert.response import JSON_COMPACT
from herd.router.convert.response_items import (
    call_item,
    message_item,
    new_item_id,
    reasoning_item,
    response_object,
    status_of,
    text_part,
    usage_of,
)
from herd.router.convert.toolchoice import NotACall, settle


def _event(obj: dict[str, Any]) -> bytes:
    try:
        data = json.dumps(obj, **JSON_COMPACT).encode()
    except UnicodeEncodeError:
        data = json.dumps(obj, separators=(",", ":")).encode()
    return b"event: " + obj["type"].encode() + b"\ndata: " + data + b"\n\n"


class ResponsesStream:
    """One streamed response; `feed` each native chunk, `fail` if the node breaks."""

    def __init__(
        self,
        model: str,
        include_usage: bool = False,
        *,
        request: Converted | None = None,
        now: float | None = None,
    ) -> None:
        self.request = request or Converted({}, model)
        self.id = new_item_id("resp")
        self.created = int(now if now is not None else time.time())
        self.done = False
        self._seq = 0
        self._started = False
        self._output: list[dict[str, Any]] = []
        #: The open item: ("reasoning" | "message", its index in output).
        self._open: tuple[str, int] | None = None
        self._text = ""
        self._reasoning_tokens = 0
        self._held_text = ""
        self._held_calls: list[Any] = []
        self._calls = 0

    # ------------------------------------------------------------ framing

    def _emit(self, kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return _event(obj)

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(
            self.request,
            id=self.id,
            created=self.created,
            status=status,
            output=list(self._output),
            **extra,
        )

    def _start(self) -> bytes:
        self._started = True
        snapshot = self._response("in_progress")
        return self._emit("response.created", response=snapshot) + self._emit(
            "response.in_progress", response=snapshot
        )

    # ------------------------------------------------------------ items

    def _open_item(self, kind: str) -> bytes:
        out = self._close()
        index = len(self._output)
        if kind == "reasoning":
            item = reasoning_item("", new_item_id("rs"), "in_progress")
            part = {"type": "reasoning_text", "text": ""}
        else:
            item = message_item("", new_item_id("msg"), "in_progress")
            part = text_part("")
        self._output.append(item)
        self._open = (kind, index)
        self._text = ""
        out += self._emit("response.output_item.added", output_index=index, item=item)
        out += self._emit(
            "response.content_part.added",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            part=part,
        )
        return out

    def _delta(self, kind: str, text: str) -> bytes:
        out = b"" if self._open and self._open[0] == kind else self._open_item(kind)
        assert self._open is not None
        index = self._open[1]
        self._text += text
        fields: dict[str, Any] = {
            "item_id": self._output[index]["id"],
            "output_index": index,
            "content_index": 0,
            "delta": text,
        }
        if kind == "reasoning":
            self._reasoning_tokens += 1
            return out + self._emit("response.reasoning_text.delta", **fields)
        return out + self._emit("response.output_text.delta", logprobs=[], **fields)

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        kind, index = self._open
        self._open = None
        item_id = self._output[index]["id"]
        place = {"item_id": item_id, "output_index": index, "content_index": 0}
        if kind == "reasoning":
            item = reasoning_item(self._text, item_id)
            part = {"type": "reasoning_text", "text": self._text}
            out = self._emit("response.reasoning_text.done", text=self._text, **place)
        else:
            item = message_item(self._text, item_id)
            part = text_part(self._text)
            out = self._emit(
                "response.output_text.done", text=self._text, logprobs=[], **place
            )
        self._output[index] = item
        out += self._emit("response.content_part.done", part=part, **place)
        return out + self._emit(
            "response.output_item.done", output_index=index, item=item
        )

    def _call(self, call: Mapping[str, Any]) -> bytes:
        out = self._close()
        index = len(self._output)
        item = call_item(call, new_item_id("fc"))
        self._output.append(item)
        self._calls += 1
        place = {"item_id": item["id"], "output_index": index}
        out += self._emit(
            "response.output_item.added",
            output_index=index,
            item={**item, "arguments": "", "status": "in_progress"},
        )
        out += self._emit(
            "response.function_call_arguments.delta", delta=item["arguments"], **place
        )
        out += self._emit(
            "response.function_call_arguments.done",
            arguments=item["arguments"],
            name=item["name"],
            **place,
        )
        return out + self._emit(
            "response.output_item.done", output_index=index, item=item
        )

    # ------------------------------------------------------------ protocol

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        if self.done:
            return b""
        out = b"" if self._started else self._start()
        if chunk.get("error"):
            return out + self.fail(str(chunk["error"]))
        msg = chunk.get("message") or {}
        plan = self.request.plan
        if msg.get("thinking"):
            out += self._delta("reasoning", msg["thinking"])
        calls = list(msg.get("tool_calls") or ())
        if plan is not None and plan.forced:
            self._held_text += msg.get("content") or ""
            self._held_calls += calls
            if not chunk.get("done"):
                return out
            held = {"content": self._held_text, "tool_calls": self._held_calls}
            try:
                settled = settle(held, chunk.get("done_reason"), plan)
            except NotACall as ex:
                return out + self.fail(ex.message)
            text, calls = settled.get("content") or "", settled.get("tool_calls") or []
        else:
            text = msg.get("content") or ""
        if text:
            out += self._delta("message", text)
        if plan is not None and plan.single:
            calls = calls[: max(0, 1 - self._calls)]
        for call in calls:
            out += self._call(call)
        if not chunk.get("done"):
            return out
        out += self._close()
        self.done = True
        status = status_of(chunk)
        final = self._response(status, usage=usage_of(chunk, self._reasoning_tokens))
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._emit(kind, response=final)

    def fail(self, message: str) -> bytes:
        """The stream broke after it started: an `error` event, `response.failed`."""
        if self.done:
            return b""
        out = b"" if self._started else self._start()
        self.done = True
        out += self._emit("error", code="server_error", message=message, param=None)
        error = {"code": "server_error", "message": message}
        return out + self._emit(
            "response.failed", response=self._response("failed", error=error)
        )
