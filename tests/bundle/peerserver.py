"""A peer router's registry on loopback: the real falcon routes, a real HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon

from herd.router.api import registry


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Threaded(WSGIServer):
    """One thread per connection (a slow client does not hold the others)."""

    def process_request(self, request: Any, client_address: Any) -> None:
        threading.Thread(
            target=self._serve, args=(request, client_address), daemon=True
        ).start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)


def registry_app(store: Path) -> falcon.App:
    app = falcon.App()
    registry.add_routes(app, lambda: store)
    return app


class Server:
    """`app` served on 127.0.0.1 (a free port) until `close()`."""

    def __init__(self, app: Callable[..., Any]):
        self.httpd = make_server("127.0.0.1", 0, app, _Threaded, _Quiet)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(app: Callable[..., Any]) -> Iterator[str]:
    server = Server(app)
    try:
        yield server.url
    finally:
        server.close()
