"""Sending one request to the best node: choose, queue, send, retry, fall back.

`Forwarder.open` walks the model and its fallbacks in order; for each it asks
`scoring.choose_node` for a ranking, takes a slot (`queues`), and sends. A
connection failure, a timeout before the first byte, a 5xx or 404, an empty
or non-JSON answer are all "before the first byte": the slot is released and
the next node is tried, within `limits.retries`. What it returns is committed:
the first line of a stream (or the whole non-streaming body) is already read
and checked, so the caller can start answering the client.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from herd.errors import (
    HerdError,
    NoHealthyNode,
    QueueFull,
    UpstreamError,
    UpstreamTimeout,
)
from herd.manifest.model import Fleet, Model, Node
from herd.router.api.aggregate import Fold
from herd.router.convert import to_openai
from herd.router.observe.logfield import logged
from herd.router.routing import openaileg
from herd.router.routing.nodejson import node_object
from herd.router.routing.openaileg import OpenAIForm
from herd.router.routing.proxy import Reply, StreamBroken, Upstream, UpstreamFailure
from herd.router.routing.queues import Queues
from herd.router.routing.scoring import Candidate, Decision, RouteRequest, choose_node
from herd.router.routing.stats import Stats

log = logging.getLogger("herd.router")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True)
class Outcome:
    """What happened to one request so far; becomes its trace row. (Slots:
    one is made, filled and read for every request.)"""

    t0: float
    started: float
    route: str
    method: str
    client: str | None = None
    requested_model: str | None = None
    served_model: str | None = None
    node: str | None = None
    status: int = 0
    queue_ms: float | None = None
    ttft_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    retries: int = 0
    error_class: str | None = None
    #: The caller's address, normalized (herd.router.http.peer).
    peer: str | None = None
    #: The request's validated tags (herd.router.observe.tags), comma-joined.
    tags: str | None = None
    #: Set once the trace is recorded (a request is finished exactly once).
    finished: bool = False
    #: The scoring decisions taken (one per model tried), for X-Herd-Decision.
    decisions: list[Decision] = field(default_factory=list)
    #: Labels the client prefers (X-Herd-Prefer), a soft scoring bonus.
    prefer: Mapping[str, str] = field(default_factory=dict)

    def counts(self, final: dict[str, Any]) -> None:
        """Take token counts from a node's final (`done`) object."""
        if "prompt_eval_count" in final:
            self.tokens_in = final.get("prompt_eval_count")
        if "eval_count" in final:
            self.tokens_out = final.get("eval_count")


@dataclass(slots=True)
class Opened:
    """A node's committed answer: the first line (stream) or the whole body."""

    node: Node
    model: Model
    status: int
    content_type: str
    body: bytes | None = None
    first: bytes | None = None
    first_obj: dict[str, Any] | None = None
    rest: Iterator[bytes] | None = None
    reply: Reply | None = None
    sent_at: float = 0.0
    #: When the node's first line arrived (streams and folded streams).
    first_at: float = 0.0
    #: An OpenAI node's own answer (JSON, or SSE events in `first`/`rest`)
    #: to an OpenAI-API client, relayed as it came (herd.router.routing.openaileg).
    passthrough: bool = False
    _release: Callable[[], None] | None = None

    def release(self) -> None:
        """Give the node slot back (once) and close the upstream connection."""
        if self.reply is not None:
            self.reply.close()
            self.reply = None
        if self._release is not None:
            self._release()
            self._release = None


class Forwarder:
    """Choose-queue-send-retry, shared by every forwarded route."""

    def __init__(
        self,
        *,
        health: Any,
        queues: Queues,
        stats: Stats,
        upstream: Upstream,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.health = health
        self.queues = queues
        self.stats = stats
        self.upstream = upstream
        self.clock = clock

    def candidates(self, fleet: Fleet, model: Model) -> tuple[Candidate, ...]:
        out = []
        key = model.name
        get, stats, load = self.health.get, self.stats, self.queues.load
        memory_of = getattr(self.health, "memory", None)
        for node in fleet.nodes_for(model):
            name = node.name
            health = get(node)
            up = health.up
            ttft, tps = stats.perf(name, key)
            in_flight, waiting = load(name)
            # Made whole (every field, in order): a named tuple's constructor
            # is a Python call, and one from keywords costs twice as much.
            candidate = _new_candidate(
                Candidate,
                (
                    name,
                    up,
                    key in health.loaded,
                    (key in health.on_disk) if up else None,
                    in_flight,
                    node.max_concurrency,
                    waiting,
                    ttft,
                    tps,
                    stats.error_rate(name),
                    node.labels,
                    *_CANDIDATE_REST,
                ),
            )
            if memory_of is not None:
                memory = memory_of(node, health, key)
                if memory:
                    candidate = candidate._replace(**memory)
            out.append(candidate)
        return tuple(out)

    def decide(
        self, fleet: Fleet, model: Model, prefer: Mapping[str, str] | None = None
    ) -> Decision:
        request = (
            RouteRequest(model.name, prefer) if prefer else _plain_request(model.name)
        )
        return choose_node(request, self.candidates(fleet, model))

    def open(
        self,
        fleet: Fleet,
        path: str,
        body: dict[str, Any],
        models: tuple[Model, ...],
        *,
        stream: bool,
        outcome: Outcome,
        raw: bytes | None = None,
        openai: OpenAIForm | None = None,
    ) -> Opened:
        """The first good answer from the best node able to serve `models[0]`
        (or, failing that, a fallback). Raises a HerdError when none can.

        `openai` is the request as an OpenAI-API client sent it: an `api:
        openai` node gets that body (model renamed) and its answer comes back
        as is (`Opened.passthrough`); other nodes get the native `body`."""
        limits = fleet.router.limits
        deadline = self.clock() + limits.request_timeout_s
        attempts = limits.retries + 1
        error: HerdError | None = None
        last: Opened | None = None
        for model in models:
            decision = self.decide(fleet, model, outcome.prefer)
            outcome.decisions.append(decision)
            if not decision.ranked:
                public = f"no healthy node can serve model {model.name}"
                error = error or NoHealthyNode(
                    public,
                    detail=public
                    + (f": {decision.explain()}" if decision.excluded else ""),
                )
                continue
            tried: set[str] = set()
            nodes = decision.nodes
            while attempts > 0:
                ranked = tuple(n for n in nodes if n not in tried) if tried else nodes
                if not ranked:
                    break
                try:
                    name, waited = self.queues.acquire(ranked, limits.queue_timeout_s)
                except QueueFull as ex:
                    error = error or ex
                    break
                tried.add(name)
                attempts -= 1
                if waited:
                    outcome.queue_ms = round((outcome.queue_ms or 0.0) + waited, 3)
                elif outcome.queue_ms is None:
                    outcome.queue_ms = 0.0
                node = fleet.node(name)
                assert node is not None
                if node.api == "openai":
                    result = self._attempt_openai(
                        node, model, path, body, openai, stream, limits
                    )
                else:
                    result = self._attempt(
                        node, model, path, body, raw, stream, limits, deadline
                    )
                outcome.retries = limits.retries - attempts
                if isinstance(result, Opened):
                    if result.status in _RETRY_STATUS:
                        last = result
                        continue
                    outcome.node = node.name
                    outcome.served_model = model.name
                    if result.first_at:
                        outcome.ttft_ms = round(
                            (result.first_at - outcome.started) * 1000.0, 3
                        )
                    return result
                error = result
        if last is not None:
            outcome.node, outcome.served_model = last.node.name, last.model.name
            return last
        raise error or NoHealthyNode("no node could serve this request")

    def _attempt(
        self,
        node: Node,
        model: Model,
        path: str,
        body: dict[str, Any],
        raw: bytes | None,
        stream: bool,
        limits: Any,
        deadline: float,
    ) -> Opened | HerdError:
        """One try on one node (slot already taken). Releases the slot unless it
        returns a committed stream."""
        release = self._releaser(node.name)
        # keep_alive null is the node's default: the manifest's pin applies.
        inject = model.keep_loaded is not None and body.get("keep_alive") is None
        fold = not stream and path in _GENERATING
        data = None
        if raw is not None and not inject and body.get("model") == model.name:
            data = _streaming(raw) if fold else raw
        if data is None:
            payload = dict(body)
            payload["model"] = model.name
            if inject:
                payload["keep_alive"] = _keep_alive(model.keep_loaded)
            if fold:
                payload["stream"] = True  # folded back here (see aggregate.py)
            data = dumps(payload)
        opened = self._send(node, model, path, data, limits, release)
        if not isinstance(opened, Opened):
            return opened
        reply = opened.reply
        assert reply is not None
        try:
            if (stream or fold) and reply.status == 200:
                first = reply.whole_line()
                lines: Iterator[bytes]
                if first is not None:  # the common small answer, all read
                    lines = iter(())
                    if first.isspace():
                        first = None
                else:
                    lines = reply.lines()
                    for line in lines:
                        if not line.isspace():  # (lines are never empty)
                            first = line
                            break
                if first is None:
                    opened.release()
                    return self._failed(node, "protocol", f"{node.url}: empty answer")
                opened.first_at = self.clock()
                opened.first_obj = node_object(first)
                opened.first = first if first.endswith(b"\n") else first + b"\n"
                opened.rest = lines
                if stream:
                    return opened
                opened.body = self._fold(opened, path, deadline)
            else:
                opened.body = reply.read()
        except StreamBroken as ex:
            opened.release()
            return self._failed(node, "timeout", f"{node.url}: {ex}")
        except ValueError:
            opened.release()
            return self._failed(node, "protocol", f"{node.url}: answer is not JSON")
        opened.release()
        if reply.status == 200 and not fold:
            try:
                opened.first_obj = node_object(opened.body)
            except ValueError:
                return self._failed(node, "protocol", f"{node.url}: answer is not JSON")
        if reply.status >= 500:
            self.stats.failure(node.name)
        return opened

    def _attempt_openai(
        self,
        node: Node,
        model: Model,
        path: str,
        body: dict[str, Any],
        form: OpenAIForm | None,
        stream: bool,
        limits: Any,
    ) -> Opened | HerdError:
        """One try on an OpenAI-compatible node (slot already taken)."""
        release = self._releaser(node.name)
        if path == "/api/show":
            release()
            shown = to_openai.show(model.name, model.kind)
            return Opened(
                node=node,
                model=model,
                status=200,
                content_type="application/json; charset=utf-8",
                body=dumps(shown),
                first_obj=shown,
            )
        node_id = openaileg.node_model_id(self.health, node, model)
        try:
            target, payload = openaileg.outgoing(path, body, form, node_id)
        except HerdError:
            release()
            raise
        data = dumps(payload)
        opened = self._send(node, model, target, data, limits, release)
        if not isinstance(opened, Opened):
            return opened
        reply = opened.reply
        assert reply is not None
        result = openaileg.commit(
            opened,
            reply,
            path,
            form,
            stream,
            lambda kind, message: self._failed(node, kind, message),
        )
        if isinstance(result, Opened):
            if result.first is not None:
                result.first_at = self.clock()
            if result.status >= 500:
                self.stats.failure(node.name)
        return result

    def _releaser(self, name: str) -> Callable[[], None]:
        """Gives node `name`'s slot back. Called once on every path: by
        `_send` when sending failed, else by `Opened.release` (which forgets
        it after the call)."""
        return self.queues.slots(name).release

    def _send(
        self,
        node: Node,
        model: Model,
        path: str,
        data: bytes,
        limits: Any,
        release: Callable[[], None],
    ) -> Opened | HerdError:
        """POST `data` (JSON) to the node with its credentials; the answer's
        status and headers read. A failure releases the slot."""
        sent = self.clock()
        try:
            reply = self.upstream.open(
                node.url,
                "POST",
                path,
                data,
                connect_s=limits.connect_timeout_s,
                network_s=limits.first_byte_timeout_s,
                headers=node.auth,
            )
        except UpstreamFailure as ex:
            release()
            return self._failed(node, ex.kind, ex.message)
        # Positional, the rest set after: keywords reach a dataclass's
        # __init__ through a dict, half the cost of making one.
        opened = Opened(node, model, reply.status, reply.content_type)
        opened.reply, opened.sent_at, opened._release = reply, sent, release
        return opened

    def _fold(self, opened: Opened, path: str, deadline: float) -> bytes:
        """Read a whole node stream and fold it into one object (the answer
        to a non-streaming request). A node `{"error"}` line becomes a 500 the
        caller may retry elsewhere; garbage or an early end raise."""
        obj = opened.first_obj or {}
        if obj.get("done") and opened.first is not None:
            # The whole answer in one object (a node that did not stream).
            opened.content_type = "application/json; charset=utf-8"
            return opened.first
        fold = Fold(chat=path == "/api/chat")
        lines = opened.rest or iter(())
        while True:
            if obj.get("error"):
                opened.status = 500
                opened.first_obj = {"error": str(obj["error"])}
                return dumps(opened.first_obj)
            if fold.feed(obj):
                break
            line = next(lines, None)
            if line is None:
                raise StreamBroken("node ended the stream before it was done")
            if not line.strip():
                continue
            if self.clock() > deadline:
                raise StreamBroken("request timeout reached")
            obj = node_object(line)
        opened.content_type = "application/json; charset=utf-8"
        opened.first_obj = fold.result()
        return dumps(opened.first_obj)

    def node_failed(self, node: Node, kind: str, message: str) -> HerdError:
        """The error for a node that failed before answering, counted and
        logged (for routes that send to nodes themselves, e.g. uploads)."""
        return self._failed(node, kind, message)

    def _failed(self, node: Node, kind: str, message: str) -> HerdError:
        """The error for a node that failed before answering. Its message
        says only what kind of failure it was; the node, its URL and the
        cause are the `detail` operators see (and the router's log)."""
        self.stats.failure(node.name)
        log.warning(
            "node %s failed before answering: %s",
            logged(node.name),
            logged(message, 500, spaces=True),
        )
        if kind == "connect" and hasattr(self.health, "report_refused"):
            self.health.report_refused(node, message)
        public = _PUBLIC_FAILURE.get(kind, _PUBLIC_FAILURE["protocol"])
        detail = f"node {node.name} ({message})"
        if kind == "timeout":
            return UpstreamTimeout(public, detail=detail)
        return UpstreamError(public, detail=detail)


_new_candidate = tuple.__new__
#: The defaults of the Candidate fields `candidates` does not fill (memory
#: facts, set only for a node an agent reports for).
_CANDIDATE_REST = tuple(
    Candidate._field_defaults[name] for name in Candidate._fields[11:]
)


@functools.lru_cache(maxsize=1024)
def _plain_request(model: str) -> RouteRequest:
    """The placement request for `model` without preferred labels (the
    common case), made once per model name instead of per request."""
    return RouteRequest(model)


#: What a caller outside the operator groups learns about a node failure.
_PUBLIC_FAILURE = {
    "connect": "the node chosen for this request refused the connection or could "
    "not be reached",
    "timeout": "the node chosen for this request did not answer in time",
    "protocol": "the node chosen for this request gave an answer herd could not use",
}


#: Routes whose non-streaming answers the router folds from a node stream.
_GENERATING = frozenset({"/api/chat", "/api/generate"})


_RETRY_STATUS = frozenset({404, 500, 502, 503, 504})


_STREAM_FALSE = re.compile(rb'"stream"\s*:\s*false')
#: A \u escape of a lowercase ASCII letter: `"str\u0065am"` is the key
#: "stream" without showing as its plain bytes.
_LETTER_ESCAPE = re.compile(rb"\\u00[67]")


def _streaming(raw: bytes) -> bytes | None:
    """The client's body with `"stream": false` turned into true, without
    re-encoding it; None unless `"stream"` occurs exactly once as plain bytes
    and no key can be spelled with escapes (then that one occurrence is the
    top-level key the caller parsed as false, not a nested key or value)."""
    at = raw.find(b'"stream"')
    if (
        at < 0
        or raw.find(b'"stream"', at + 8) >= 0
        # (`find`, not `in`: `bytes in bytes` first tries the needle as an
        # integer, raising and clearing a TypeError, twice find's cost.)
        or (raw.find(b"\\u00") >= 0 and _LETTER_ESCAPE.search(raw))
    ):
        return None
    # The two spellings JSON encoders write, checked without a regex.
    if raw.startswith(b'"stream": false', at):
        end = at + 15
    elif raw.startswith(b'"stream":false', at):
        end = at + 14
    else:
        found = _STREAM_FALSE.match(raw, at)
        if found is None:
            return None
        end = found.end()
    return raw[:at] + b'"stream":true' + raw[end:]


def _keep_alive(value: str) -> Any:
    """Manifest keep_loaded -> the wire value (a number of seconds or a duration)."""
    try:
        return int(value)
    except ValueError:
        return value


_dumps_ascii = json.JSONEncoder(separators=(",", ":")).encode


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON. A string holding a lone surrogate (JSON allows the
    escape `\\ud800`; it is no UTF-8) is written escaped, which Go reads as
    U+FFFD just as it would have read the client's own bytes."""
    try:
        return _dumps(obj).encode("utf-8")
    except UnicodeEncodeError:
        return _dumps_ascii(obj).encode("ascii")
