"""The HTTP surface of `herd sim`: a Falcon app that speaks Ollama's native API.

`create_app(state)` returns the WSGI app; `herd.sim.run` serves it with gevent.
Errors are `{"error": ...}` with Ollama's statuses; streams are NDJSON, one
object per line, no blank lines (shared reference §1.1). Fault modes are applied
by one middleware, before the resource runs (slow, hang, error, garbage) or
around its output (cut-mid-stream).
"""

from __future__ import annotations

import errno
import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import falcon
import gevent

from herd.router.http.peer import peer_address
from herd.sim import VERSION, Fault, SimError, SimState, openai_face
from herd.sim import models as sm
from herd.sim.inference import (
    JSON_TYPE,
    Chat,
    Embed,
    Embeddings,
    Generate,
    dumps,
    read_body,
)
from herd.sim.management import Management

GARBAGE = b"\x00\xff<html><body>502 Bad Gateway</body></html>\xfe\n{not json\n"
HANG_S = 3600.0


def _drop(reason: str) -> ConnectionResetError:
    # pywsgi closes the socket quietly on ECONNRESET: the client sees a cut body.
    return ConnectionResetError(errno.ECONNRESET, reason)


class Faults:
    """Middleware: counts requests and applies the node's current fault."""

    def __init__(self, state: SimState):
        self.state = state

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.cut = None
        if req.path.startswith("/_sim/"):
            return
        self.state.requests[req.path] += 1
        self.state.active += 1
        fault = self.state.take_fault(req.path)
        if fault is None:
            return
        if fault.mode == "slow":
            gevent.sleep(fault.delay_s)
        elif fault.mode == "hang":
            resp.stream = _hang(max(fault.delay_s, HANG_S))
            resp.complete = True
        elif fault.mode == "error":
            resp.status = 500
            resp.content_type = JSON_TYPE
            resp.data = dumps({"error": "simulated failure (herd sim fault 'error')"})
            resp.complete = True
        elif fault.mode == "garbage":
            resp.content_type = JSON_TYPE
            resp.data = GARBAGE
            resp.complete = True
        elif fault.mode == "cut-mid-stream":
            req.context.cut = fault

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, ok: bool
    ) -> None:
        if req.path.startswith("/_sim/"):
            return
        fault: Fault | None = req.context.cut
        if fault is not None:
            if resp.stream is None:
                data = resp.data or b""
                resp.content_length = len(data)
                resp.data = None
                resp.stream = _cut_body(data)
            else:
                resp.stream = _cut_stream(resp.stream, fault.after_chunks)
        if resp.stream is None:
            self.state.active -= 1
        else:
            resp.stream = self._count(resp.stream)

    def _count(self, stream: Any) -> Iterator[bytes]:
        try:
            yield from stream
        finally:
            self.state.active -= 1


def _hang(seconds: float) -> Iterator[bytes]:
    gevent.sleep(seconds)
    raise _drop("herd sim fault 'hang'")
    yield b""  # pragma: no cover - makes this a generator


def _cut_body(data: bytes) -> Iterator[bytes]:
    yield data[: len(data) // 2]
    raise _drop("herd sim fault 'cut-mid-stream'")


def _cut_stream(stream: Any, after: int) -> Iterator[bytes]:
    for sent, chunk in enumerate(stream):
        if sent >= after:
            raise _drop("herd sim fault 'cut-mid-stream'")
        yield chunk
    raise _drop("herd sim fault 'cut-mid-stream'")


class Listing:
    """GET/HEAD /api/tags, GET /api/ps, POST /api/show, GET/HEAD /api/version and /."""

    def __init__(self, state: SimState):
        self.state = state

    def on_get_tags(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = JSON_TYPE
        models = [m.tag() for m in self.state.models.values()]
        if not self.state.tag_capabilities:
            for entry in models:
                del entry["capabilities"]
        resp.data = dumps({"models": models})

    on_head_tags = on_get_tags

    def on_get_ps(self, req: falcon.Request, resp: falcon.Response) -> None:
        now = time.time()
        live = sorted(
            ((exp, name) for name, exp in self.state.loaded.items() if exp > now),
            reverse=True,
        )
        models = []
        for expires, name in live:
            model = self.state.models.get(sm.normalize(name))
            if model is None:  # deleted while loaded
                continue
            models.append(
                {
                    "name": model.name,
                    "model": model.name,
                    "size": model.size,
                    "digest": model.digest,
                    "details": model.details(),
                    "expires_at": _rfc3339(min(expires, 4e9)),
                    "size_vram": model.size,
                    "context_length": 4096,
                }
            )
        resp.content_type = JSON_TYPE
        resp.data = dumps({"models": models})

    def on_post_show(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req)
        name = body.get("model") or body.get("name")
        model = self.state.model(name, "/api/show")
        resp.content_type = JSON_TYPE
        resp.data = dumps(model.show())

    def on_get_version(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = JSON_TYPE
        resp.data = dumps({"version": VERSION})

    on_head_version = on_get_version

    def on_get_root(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/plain; charset=utf-8"
        resp.data = b"Ollama is running"

    on_head_root = on_get_root


def _rfc3339(epoch: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{stamp}.{int(epoch % 1 * 1e9):09d}Z"


class Control:
    """Loopback-only /_sim/fault and /_sim/stats."""

    def __init__(self, state: SimState):
        self.state = state

    def _local(self, req: falcon.Request) -> None:
        try:
            # ::ffff:127.0.0.1 (IPv4 loopback on a dual-stack bind) is loopback too.
            loopback = ipaddress.ip_address(peer_address(req.remote_addr)).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SimError(403, "the /_sim control routes answer loopback only")

    def on_get_fault(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._local(req)
        resp.content_type = JSON_TYPE
        resp.data = dumps(self.state.fault_doc())

    def on_post_fault(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._local(req)
        self.state.fault = Fault.parse(read_body(req))
        self.on_get_fault(req, resp)

    def on_get_stats(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._local(req)
        resp.content_type = JSON_TYPE
        resp.data = dumps(self.state.stats())

    def on_delete_stats(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._local(req)
        self.state.requests.clear()
        self.state.by_model.clear()
        self.on_get_stats(req, resp)


def _error(
    req: falcon.Request, resp: falcon.Response, ex: SimError, params: Any
) -> None:
    resp.status = ex.status
    resp.content_type = JSON_TYPE
    resp.data = dumps({"error": ex.message})


def _not_found(req: falcon.Request, resp: falcon.Response, **kwargs: Any) -> None:
    # gin's plain-text 404, as a real node answers unknown paths.
    resp.status = 404
    resp.content_type = "text/plain"
    resp.data = b"404 page not found"


def create_app(
    state: SimState, api: str = "ollama", token: str | None = None
) -> falcon.App:
    """The sim node's WSGI app over `state` (shared by every request):
    Ollama's API, or with `api="openai"` an OpenAI-compatible server."""
    app = falcon.App(middleware=[Faults(state)], cors_enable=False)
    app.add_error_handler(SimError, _error)
    if api == "openai":
        openai_face.add_routes(app, state, token)
        control = Control(state)
        app.add_route("/_sim/fault", control, suffix="fault")
        app.add_route("/_sim/stats", control, suffix="stats")
        app.add_sink(_not_found, prefix="/")
        return app
    app.add_error_handler(openai_face.OpenAIError, openai_face.handle_error)
    openai_face.add_media_routes(app, state, token)
    listing, control = Listing(state), Control(state)
    app.add_route("/", listing, suffix="root")
    app.add_route("/api/version", listing, suffix="version")
    app.add_route("/api/tags", listing, suffix="tags")
    app.add_route("/api/ps", listing, suffix="ps")
    app.add_route("/api/show", listing, suffix="show")
    app.add_route("/api/chat", Chat(state))
    app.add_route("/api/generate", Generate(state))
    app.add_route("/api/embed", Embed(state))
    app.add_route("/api/embeddings", Embeddings(state))
    management = Management(state)
    app.add_route("/api/pull", management, suffix="pull")
    app.add_route("/api/copy", management, suffix="copy")
    app.add_route("/api/delete", management, suffix="delete")
    app.add_route("/_sim/fault", control, suffix="fault")
    app.add_route("/_sim/stats", control, suffix="stats")
    app.add_sink(_not_found, prefix="/")
    return app
