"""Relaying a committed stream to the client, chunk by chunk, never buffered.

Once the first byte went out the stream is committed: if the node dies, sends
garbage, goes idle past its timeout or runs past the request timeout, the
client's stream ends with one final error line (Ollama NDJSON
`{"error": "..."}`) or an SSE error event then `[DONE]` (OpenAI), and nothing
else. Every path through a relay ends in `finish`, which releases the node
slot and writes the trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from herd.router.routing.forward import Opened, Outcome, dumps
from herd.router.routing.nodejson import node_object
from herd.router.routing.proxy import StreamBroken

Finish = Callable[[Opened, Outcome, str | None], None]
Clock = Callable[[], float]


class Converter(Protocol):
    done: bool

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def fail(self, message: str) -> bytes: ...


class Committed:
    """A stream's body iterable. Closing it always finishes the request, even
    when the server closes it before reading a byte (the generator's own
    `finally` only runs once it has started)."""

    def __init__(
        self, body: Iterator[bytes], opened: Opened, outcome: Outcome, finish: Finish
    ):
        self._body = body
        self._opened = opened
        self._outcome = outcome
        self._finish = finish

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            self._finish(self._opened, self._outcome, "client_gone")


def native_objects(
    opened: Opened, deadline: float, clock: Clock
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(line, object) pairs of a node's NDJSON stream, first line included.

    Raises StreamBroken on garbage, an early end, or the request deadline.
    """
    assert opened.first is not None and opened.first_obj is not None
    yield opened.first, opened.first_obj
    if opened.first_obj.get("done") or opened.first_obj.get("error"):
        return
    for line in opened.rest or ():
        if not line.strip():
            continue
        try:
            obj = node_object(line)
        except ValueError as ex:
            raise StreamBroken(f"node sent a line that is not JSON ({ex})") from ex
        yield (line if line.endswith(b"\n") else line + b"\n"), obj
        if obj.get("done") or obj.get("error"):
            return
        if clock() > deadline:
            raise StreamBroken("request timeout reached")
    raise StreamBroken("node ended the stream before it was done")


def ndjson(
    opened: Opened, outcome: Outcome, finish: Finish, deadline: float, clock: Clock
) -> Committed:
    """Ollama NDJSON passed through line by line (already valid, one per line)."""
    pieces = _ndjson(opened, outcome, deadline, clock)
    return _commit(pieces, _ndjson_error, opened, outcome, finish)


def sse(
    opened: Opened,
    converter: Converter,
    outcome: Outcome,
    finish: Finish,
    deadline: float,
    clock: Clock,
) -> Committed:
    """Ollama NDJSON converted to OpenAI SSE events as each line arrives."""
    pieces = _sse(opened, converter, outcome, deadline, clock)
    return _commit(pieces, converter.fail, opened, outcome, finish)


def sse_passthrough(
    opened: Opened, outcome: Outcome, finish: Finish, deadline: float, clock: Clock
) -> Committed:
    """An OpenAI node's SSE events relayed as they came (OpenAI-API client)."""
    pieces = _sse_passthrough(opened, outcome, deadline, clock)
    return _commit(pieces, _sse_error, opened, outcome, finish)


#: What each relay yields: bytes for the client (may be empty) and the error
#: class the piece showed (a node's `{"error"}` object), if any.
Pieces = Iterator[tuple[bytes, str | None]]


class _Malformed(StreamBroken):
    """A node's chunk of the wrong shape for the conversion (`"content": 1`)."""


def _commit(
    pieces: Pieces,
    fail: Callable[[str], bytes],
    opened: Opened,
    outcome: Outcome,
    finish: Finish,
) -> Committed:
    return Committed(
        _relay(pieces, fail, opened, outcome, finish), opened, outcome, finish
    )


def _relay(
    pieces: Pieces,
    fail: Callable[[str], bytes],
    opened: Opened,
    outcome: Outcome,
    finish: Finish,
) -> Iterator[bytes]:
    """Every relay's frame: a broken stream ends with one error (`fail`), a
    client gone is noted, and `finish` always runs."""
    error: str | None = None
    try:
        for data, noted in pieces:
            error = noted or error
            if data:
                yield data
    except _Malformed:
        error = "stream_broken"
        yield fail(f"herd: node {opened.node.name} sent a malformed chunk")
    except StreamBroken as ex:
        error = "stream_broken"
        yield fail(f"herd: node {opened.node.name} failed mid-stream: {ex}")
    except GeneratorExit:
        error = "client_gone"
        raise
    finally:
        finish(opened, outcome, error)


def _ndjson_error(message: str) -> bytes:
    return dumps({"error": message}) + b"\n"


def _sse_error(message: str) -> bytes:
    event = dumps({"error": {"message": message, "type": "server_error"}})
    return b"data: " + event + b"\n\ndata: [DONE]\n\n"


def _observe(outcome: Outcome, obj: dict[str, Any], clock: Clock) -> str | None:
    """Note time to first token and the final counts; an error object's class."""
    if outcome.ttft_ms is None:
        outcome.ttft_ms = round((clock() - outcome.started) * 1000.0, 3)
    if obj.get("done"):
        outcome.counts(obj)
        return None
    return "node_error" if obj.get("error") else None


def _ndjson(opened: Opened, outcome: Outcome, deadline: float, clock: Clock) -> Pieces:
    for line, obj in native_objects(opened, deadline, clock):
        yield line, _observe(outcome, obj, clock)


def _sse(
    opened: Opened,
    converter: Converter,
    outcome: Outcome,
    deadline: float,
    clock: Clock,
) -> Pieces:
    for _, obj in native_objects(opened, deadline, clock):
        noted = _observe(outcome, obj, clock)
        try:
            out = converter.feed(obj)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as ex:
            # JSON of the wrong shape from the node (`"content": 1`, ...).
            raise _Malformed(str(ex)) from ex
        yield out, noted
        if converter.done:
            return


def _sse_passthrough(
    opened: Opened, outcome: Outcome, deadline: float, clock: Clock
) -> Pieces:
    from herd.router.routing.openaileg import event_data

    events = opened.rest or iter(())
    event: bytes | None = opened.first
    while event is not None:
        if outcome.ttft_ms is None:
            outcome.ttft_ms = round((clock() - outcome.started) * 1000.0, 3)
        data = event_data(event)
        # (`find`, not `in`: `bytes in bytes` first tries the needle as an
        # integer, raising and clearing a TypeError, on every event.)
        if data and data != b"[DONE]" and data.find(b'"usage"') >= 0:
            _usage(outcome, data)
        yield event, None
        if data == b"[DONE]":
            return
        if clock() > deadline:
            raise StreamBroken("request timeout reached")
        event = next(events, None)
    raise StreamBroken("node ended the stream before [DONE]")


def _usage(outcome: Outcome, data: bytes) -> None:
    """Token counts from an OpenAI chunk's `usage`, when it has one."""
    try:
        usage = json.loads(data).get("usage")
    except (ValueError, AttributeError):
        return
    if isinstance(usage, dict):
        outcome.tokens_in = usage.get("prompt_tokens", outcome.tokens_in)
        outcome.tokens_out = usage.get("completion_tokens", outcome.tokens_out)
