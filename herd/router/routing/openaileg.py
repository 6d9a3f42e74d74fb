"""One try on an OpenAI-compatible node (`api: openai`): send, and commit.

Two ways through. An OpenAI-API client's request passes through: the body the
router parsed, with only `model` rewritten to the node's id, and the node's
answer (JSON, or SSE events) goes back as it came (`Opened.passthrough`) but
for its `model`, which names what the client asked for again. An
Ollama-API client's request is converted (herd.router.convert.to_openai) and
the answer converted back into native JSON or NDJSON lines, so that the
callers relay it exactly like an Ollama node's answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from herd.errors import HerdError
from herd.manifest.model import Model, Node
from herd.router.convert import to_openai
from herd.router.convert.response import error_body
from herd.router.routing.nodewire import TooLarge
from herd.router.routing.proxy import Reply, StreamBroken, UpstreamFailure


@dataclass(frozen=True)
class OpenAIForm:
    """The request as an OpenAI-API client sent it (for pass-through)."""

    path: str
    body: dict[str, Any]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def node_model_id(health: Any, node: Node, model: Model) -> str:
    """The model's id as the node lists it (case kept); before the first
    poll, the declared name without Ollama's implied `:latest`."""
    entry = health.get(node).details.get(model.name) or {}
    found = entry.get("model")
    if isinstance(found, str) and found:
        return found
    name = model.name
    return name[: -len(":latest")] if name.endswith(":latest") else name


def outgoing(
    path: str, body: dict[str, Any], form: OpenAIForm | None, node_id: str
) -> tuple[str, dict[str, Any]]:
    """(path, body) to send: the client's own OpenAI body, or the conversion."""
    if form is not None:
        return form.path, {**form.body, "model": node_id}
    converted = to_openai.request(path, body, node_id)
    return converted.path, converted.body


def openai_error(status: int, data: bytes) -> bytes:
    """A node's error body in OpenAI's shape: as sent when it already is,
    else (an HTML page, FastAPI's `{"detail"}`) rebuilt around its message."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return data
    kind = "invalid_request_error" if status < 500 else "api_error"
    return _dumps(error_body(to_openai.error_message(data), kind))


def sse_lines(lines: Iterator[bytes]) -> Iterator[bytes]:
    """SSE events, each yielded whole (its lines and the blank line after)."""
    event: list[bytes] = []
    for line in lines:
        if line.strip():
            event.append(line if line.endswith(b"\n") else line + b"\n")
            continue
        if event:
            yield b"".join(event) + b"\n"
            event = []
    if event:
        yield b"".join(event) + b"\n"


def event_data(event: bytes) -> bytes | None:
    """The `data:` payload of one SSE event, if it has one."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def native_lines(lines: Iterator[bytes], path: str, model: str) -> Iterator[bytes]:
    """An OpenAI SSE body as native NDJSON lines."""
    converter = to_openai.SseToNdjson(path, model)
    try:
        for line in lines:
            yield from converter.feed(line)
            if converter.done:
                return
    except (ValueError, KeyError, TypeError, AttributeError) as ex:
        raise StreamBroken("node sent an SSE event herd could not read") from ex
    yield from converter.end()


def renamer(form: OpenAIForm, answer: Any) -> Callable[[bytes], bytes] | None:
    """What turns a pass-through answer's `"model": "<node's id>"` into the
    name the client asked for (as an Ollama node's answers, and Ollama's own
    OpenAI layer, name it): a byte replace per answer or SSE event, cheaper
    than parsing each. Exact: inside a JSON string every `"` is escaped, so
    the pair matches only as a key and its value. None when nothing differs."""
    asked = form.body.get("model")
    named = answer.get("model") if isinstance(answer, dict) else None
    if not isinstance(asked, str) or not isinstance(named, str) or asked == named:
        return None
    new = b'"model":' + _dumps(asked)
    old, spaced = b'"model":' + _dumps(named), b'"model": ' + _dumps(named)

    def rename(data: bytes) -> bytes:
        return data.replace(old, new).replace(spaced, new)

    return rename


def commit(
    opened: Any,
    reply: Reply,
    path: str,
    form: OpenAIForm | None,
    stream: bool,
    failed: Callable[[str, str], HerdError],
) -> Any:
    """Read the node's answer far enough to commit to it (see Forwarder.open):
    the first SSE event or line of a stream, else the whole body."""
    model = opened.model.name
    try:
        if reply.status != 200:
            data = reply.read()
            opened.release()
            if form is None:
                opened.body = _dumps({"error": to_openai.error_message(data)})
                opened.content_type = "application/json; charset=utf-8"
            else:
                opened.body = openai_error(reply.status, data)
                opened.content_type = "application/json"
                opened.passthrough = True
            return opened
        if stream and form is not None:
            events = sse_lines(reply.lines())
            first = next(events, None)
            if first is None:
                opened.release()
                return failed("protocol", f"{opened.node.url}: empty answer")
            data = event_data(first)
            opened.first_obj = {}
            if data and data != b"[DONE]":
                obj = json.loads(data)
                opened.first_obj = obj if isinstance(obj, dict) else {}
            rename = renamer(form, opened.first_obj)
            if rename is not None:
                first, events = rename(first), map(rename, events)
            opened.first, opened.rest, opened.passthrough = first, events, True
            return opened
        if stream:
            lines = native_lines(reply.lines(), path, model)
            first = next(lines, None)
            if first is None:
                opened.release()
                return failed("protocol", f"{opened.node.url}: empty answer")
            opened.first_obj = json.loads(first)
            opened.first, opened.rest = first, lines
            return opened
        data = reply.read()
        opened.release()
        answer = json.loads(data)
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
        if form is not None:
            rename = renamer(form, answer)
            if rename is not None:
                data = rename(data)
            opened.body, opened.first_obj, opened.passthrough = data, answer, True
        else:
            opened.first_obj = to_openai.reply(path, answer, model)
            opened.body = _dumps(opened.first_obj)
        opened.content_type = "application/json; charset=utf-8"
        return opened
    except StreamBroken as ex:
        opened.release()
        # An answer past nodewire.MAX_HELD is the node's fault, not a timeout.
        kind = "protocol" if isinstance(ex.__cause__, TooLarge) else "timeout"
        return failed(kind, f"{opened.node.url}: {ex}")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        opened.release()
        return failed("protocol", f"{opened.node.url}: answer is not OpenAI JSON")


__all__ = [
    "OpenAIForm",
    "UpstreamFailure",
    "commit",
    "event_data",
    "native_lines",
    "node_model_id",
    "outgoing",
    "renamer",
    "sse_lines",
]
