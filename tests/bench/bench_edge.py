"""The request edge's CPU per request: everything the router does around the node leg.

    python tests/bench/bench_edge.py [--requests 20000] [--repeat 5] [--profile]

The router app (`create_app`, the bench_router manifest: one client group
over 127.0.0.0/8, one node) is called as a WSGI callable, in this process,
with the environ the router's worker builds for wrk's POST /api/chat; the
forwarder's `open` is replaced by one that answers the node's fixed reply at
once. What is left is the edge: falcon's dispatch, the gate (admission, the
pinned revision), reading and strictly checking the body, resolving the
model, the response headers, the trace row, the metric counts. Figures are
CPU microseconds per request (process time; the minimum of `--repeat` runs
is the least disturbed by other processes on a shared machine, the median
is printed too), so two trees can be compared in one run:

    cd /work/other-tree && .venv/bin/python /path/to/bench_edge.py

(the script imports `herd` from the interpreter's environment, not from the
directory it sits in). `--profile` prints cProfile's top functions instead.

`--worker` adds the router's worker around it (herd.router.http.worker's
handler over a socket pair: head parsing, environ, body input, response
write; both ends' socket calls count) and measures, in the same run, the
bench_router "floor" app (falcon answering the fixed reply itself) through
the same handler: router and floor CPU per request, interleaved, so a
change's router-only part (router - floor) and its share in the worker's own
floor can be told apart.

`--leg` keeps the forwarder (choosing the node, its slot, the upstream client
with the worker's deadline sweeper, reading and folding the node's answer):
only the node's socket is replaced, by one that takes the request and answers
nginx's reply to it at once, in memory. With `--worker --only router` under
callgrind it counts the whole request but the syscalls and the event loop,
exactly (to about 0.1 %), where count_router.py's figures move by 2 %.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics
import sys
import time
from typing import Any

# Run as a script, this directory is on sys.path and the tree's root is not
# (`herd` must come from the interpreter's environment, as said above).
from bench_router import CHAT_BODY as CHAT_TEXT
from bench_router import FIXED_REPLY as REPLY_TEXT
from bench_router import MODEL

CHAT_BODY = CHAT_TEXT.encode()
FIXED_REPLY = REPLY_TEXT.encode()


def build(leg: bool = False) -> Any:
    from herd.manifest.model import build_fleet
    from herd.router.app import create_app
    from herd.router.observe.traces import TraceLog
    from herd.router.reload import StaticSource
    from herd.router.routing.forward import Opened
    from herd.router.routing.proxy import Upstream

    fleet = build_fleet(
        {
            "metadata": {"name": "bench"},
            "router": {
                "clients": [{"name": "bench", "networks": ["127.0.0.0/8"]}],
                "limits": {"queue_depth": 100000, "request_timeout_s": 600},
            },
            "nodes": [
                {"name": "zero", "url": "http://127.0.0.1:9", "max_concurrency": 4096}
            ],
            "models": [{"name": MODEL, "place": {"nodes": ["zero"]}}],
        }
    )
    traces = TraceLog(None)
    app = create_app(StaticSource(fleet), traces, Upstream(), background=False)
    rt = app.herd_runtime
    # Under gunicorn a background greenlet checks discovery membership
    # (DiscoveredSource.keep_checking): requests only read its generation.
    rt.source._checker = True
    node, model = fleet.nodes[0], fleet.models[0]

    def answer(fleet: Any, path: str, body: Any, models: Any, **kw: Any) -> Any:
        outcome = kw["outcome"]
        outcome.queue_ms = 0.0
        outcome.node = node.name
        outcome.served_model = model.name
        return Opened(
            node=node,
            model=model,
            status=200,
            content_type="application/json; charset=utf-8",
            body=FIXED_REPLY,
            first_obj=json.loads(FIXED_REPLY),
        )

    if leg:
        rt.forwarder.upstream = Upstream(swept=True)
        _answer_in_memory()
    else:
        rt.forwarder.open = answer
    return app, traces


#: What the bench's nginx answers to POST /api/chat (its Date fixed).
NODE_REPLY = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 15:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n"
    b"Connection: keep-alive\r\n\r\n%s" % (len(FIXED_REPLY), FIXED_REPLY)
)


class _NodeSocket:
    """A node connection's socket (and the native one under it) that takes
    every request whole and has the node's reply ready at once."""

    _read_event = None

    def __init__(self) -> None:
        self._sock = self

    def send(self, data: bytes) -> int:
        return len(data)

    def recv(self, size: int) -> bytes:
        return NODE_REPLY

    def _wait(self, event: Any) -> None:
        raise AssertionError("the node's reply is always ready")

    def settimeout(self, timeout: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _answer_in_memory() -> None:
    """Every new node connection is a `_NodeSocket` (`--leg`)."""
    from herd.router.routing import nodewire

    nodewire.Pool.connect = lambda pool: nodewire.Conn(_NodeSocket(), plain=True)


def environ() -> dict[str, Any]:
    """What the router's worker passes for wrk's request (herd.router.http.worker)."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/api/chat",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "RAW_URI": "/api/chat",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8080",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(CHAT_BODY)),
        "wsgi.input": io.BytesIO(CHAT_BODY),
        "wsgi.input_terminated": True,
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def run(app: Any, traces: Any, count: int) -> float:
    """CPU microseconds per request over `count` requests."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    buffered = traces._buffer
    started = time.process_time()
    for n in range(count):
        for _chunk in app(environ(), start_response):
            pass
        if n % 2000 == 0:
            buffered.clear()  # the writer empties it every second
    spent = time.process_time() - started
    bad = [s for s in statuses if not s.startswith("200")]
    if bad:
        raise SystemExit(f"unexpected statuses: {bad[:3]}")
    return spent * 1e6 / count


class _FloorChat:
    def on_post(self, req: Any, resp: Any) -> None:
        req.bounded_stream.read()
        resp.content_type = "application/json; charset=utf-8"
        resp.data = FIXED_REPLY


def floor_app() -> Any:
    """bench_router's FLOOR_APP: falcon answering the fixed reply itself."""
    import falcon

    app = falcon.App()
    app.add_route("/api/chat", _FloorChat())
    return app


#: wrk's request (bench_router's Lua script), as it arrives on the socket.
REQUEST = (
    b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    % len(CHAT_BODY)
    + CHAT_BODY
)


def connection(app: Any) -> tuple[Any, Any]:
    """The router's connection handler serving `app` over one end of a socket
    pair; the other end is the client's."""
    from gevent import socket

    from herd.router.http.frontdoor import FrontDoor, RouterServer
    from herd.router.http.worker import LeanHandler

    door = FrontDoor(
        keepalive=5.0, header_timeout=10.0, body_timeout=30.0, client_connections=8
    )
    server = RouterServer(
        ("127.0.0.1", 0), app, frontdoor=door, log=None, handler_class=LeanHandler
    )
    server.update_environ()  # (pywsgi does so when it starts listening)
    server.access_log_enabled = False  # as under herd's gunicorn config
    client, served = socket.socketpair()
    handler = LeanHandler(served, ("127.0.0.1", 40000), server)
    handler._accepted = time.monotonic()
    return handler, client


def run_worker(handler: Any, client: Any, traces: Any, count: int) -> float:
    """CPU microseconds per request through the handler, one kept connection."""
    started = time.process_time()
    for n in range(count):
        client.sendall(REQUEST)
        if not handler.handle_one_request():
            raise SystemExit("the handler closed the connection")
        reply = client.recv(65536)
        if n % 2000 == 0 and traces is not None:
            traces._buffer.clear()
    spent = time.process_time() - started
    if not reply.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"unexpected reply: {reply[:80]!r}")
    return spent * 1e6 / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument(
        "--leg",
        action="store_true",
        help="keep the forwarder: only the node's socket is replaced (in memory)",
    )
    parser.add_argument(
        "--only",
        choices=("router", "floor"),
        help="with --worker: serve --requests requests of this app once, after "
        "the warm-up, and print nothing (for instruction counts: run it under "
        "valgrind --tool=callgrind with two --requests and take the difference)",
    )
    args = parser.parse_args()
    app, traces = build(args.leg)
    if args.worker:
        return main_worker(app, traces, args)
    run(app, traces, 2000)  # warm-up
    # As the router's worker does after loading (etc/gunicorn.conf.py).
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(app, traces, args.requests)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    figures = [run(app, traces, args.requests) for _ in range(args.repeat)]
    import herd

    print(
        f"edge {herd.__file__.rsplit('/herd/', 1)[0]}: "
        f"min {min(figures):.1f} us/req, median {statistics.median(figures):.1f} "
        f"(max {max(figures):.1f}, n={len(figures)})"
    )
    return 0


def main_worker(app: Any, traces: Any, args: argparse.Namespace) -> int:
    routed, floor = connection(app), connection(floor_app())
    if args.only:
        served, kept = (routed, traces) if args.only == "router" else (floor, None)
        run_worker(*served, kept, 500)  # warm-up
        gc.freeze()
        gc.set_threshold(20_000, 20, 50)
        run_worker(*served, kept, args.requests)
        return 0
    run_worker(*routed, traces, 2000)  # warm-up
    run_worker(*floor, None, 2000)
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_worker(*routed, traces, args.requests)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    router, bare = [], []
    for _ in range(args.repeat):
        router.append(run_worker(*routed, traces, args.requests))
        bare.append(run_worker(*floor, None, args.requests))
    import herd

    ratios = sorted(r / f for r, f in zip(router, bare, strict=True))
    print(
        f"worker {herd.__file__.rsplit('/herd/', 1)[0]}: router min "
        f"{min(router):.1f} median {statistics.median(router):.1f} us/req; floor "
        f"min {min(bare):.1f} median {statistics.median(bare):.1f}; router - floor "
        f"(min) {min(router) - min(bare):.1f}; router / floor median "
        f"{statistics.median(ratios):.2f} (n={len(ratios)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
