"""A real HTTP registry on loopback for sim pull tests: herd's /v2 routes over a
bundle store, served by a threaded wsgiref server (parallel Range GETs work)."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon

from herd.router.api import registry


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Threaded(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextmanager
def serve_registry(store: Path) -> Iterator[str]:
    """Yield `127.0.0.1:PORT` of a registry serving `store` until the block ends."""
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    registry.add_routes(app, store)
    server = make_server(
        "127.0.0.1", 0, app, server_class=_Threaded, handler_class=_Quiet
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
