"""The WSGI environ the router's worker builds (herd/router/http/worker.py),
in-process: the real handler class over a real socket pair, no gunicorn."""

from __future__ import annotations

import time
from typing import Any

import pytest
from gevent import socket

from herd.router.http.frontdoor import FrontDoor, RouterServer
from herd.router.http.worker import LeanHandler


def _handler(app: Any) -> tuple[LeanHandler, Any]:
    door = FrontDoor(
        keepalive=5.0, header_timeout=10.0, body_timeout=10.0, client_connections=8
    )
    server = RouterServer(
        ("127.0.0.1", 0), app, frontdoor=door, log=None, handler_class=LeanHandler
    )
    server.update_environ()
    server.access_log_enabled = False
    client, served = socket.socketpair()
    handler = LeanHandler(served, ("192.0.2.7", 40001), server)
    handler._accepted = time.monotonic()
    return handler, client


def _exchange(handler: LeanHandler, client: Any, request: bytes) -> bytes:
    client.sendall(request)
    assert handler.handle_one_request()
    return client.recv(65536)


@pytest.fixture
def seen() -> list[dict[str, Any]]:
    return []


def test_each_request_gets_its_own_environ_on_a_kept_connection(seen):
    # The per-connection part of the environ is built once and copied: what
    # one request's app writes into its environ never reaches the next one.
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(dict(env))
        env["HTTP_X_LEFT_BEHIND"] = "yes"
        env["REMOTE_ADDR"] = "203.0.113.9"
        body = env["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body or b"-"]

    handler, client = _handler(app)
    try:
        first = _exchange(
            handler,
            client,
            b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nX_Under: 1\r\nX-Two: a\r\n"
            b"X-Two: b\r\nContent-Type: text/plain\r\ncontent-type: text/html\r\n"
            b"CONTENT-LENGTH: 3\r\n\r\nabc",
        )
        second = _exchange(handler, client, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    finally:
        handler._close()
        client.close()
    assert first.endswith(b"\r\n\r\nabc") and second.endswith(b"\r\n\r\n-")
    one, two = seen
    assert one["REMOTE_ADDR"] == two["REMOTE_ADDR"] == "192.0.2.7"
    assert one["REMOTE_PORT"] == "40001"
    assert (one["PATH_INFO"], one["QUERY_STRING"]) == ("/a", "x=1")
    assert (two["PATH_INFO"], two["QUERY_STRING"]) == ("/b", "")
    assert one["HTTP_X_TWO"] == "a,b" and "HTTP_X_UNDER" not in one
    # The first Content-Type, whatever its case; the length as parsed; neither
    # also as an HTTP_ key.
    assert (one["CONTENT_TYPE"], one["CONTENT_LENGTH"]) == ("text/plain", "3")
    assert "HTTP_CONTENT_TYPE" not in one and "HTTP_CONTENT_LENGTH" not in one
    assert "HTTP_X_LEFT_BEHIND" not in two and "CONTENT_LENGTH" not in two
    assert "HTTP_X_TWO" not in two
    assert one["wsgi.input_terminated"] is True
    assert one["gunicorn.sock"] is two["gunicorn.sock"]
    # Closed: nothing the handler keeps holds the socket any more.
    assert "_env_base" not in handler.__dict__


def test_a_body_in_the_buffer_reads_in_parts_and_to_its_end(seen):
    # A body that arrived with its head is read from the buffer directly:
    # sized reads, then the rest, then nothing, never the next request's bytes.
    parts: list[bytes] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = env["wsgi.input"]
        parts.extend([stream.read(2), stream.read(-1), stream.read(), stream.read(5)])
        start_response("200 OK", [])
        return [b"ok"]

    handler, client = _handler(app)
    try:
        reply = _exchange(
            handler,
            client,
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok")
        assert parts == [b"he", b"llo", b"", b""]
        parts.clear()
        client.settimeout(5)
        assert handler.handle_one_request()  # the pipelined GET, intact
        assert client.recv(65536).endswith(b"ok") and parts == [b"", b"", b"", b""]
    finally:
        handler._close()
        client.close()


def test_response_fields_are_checked_every_time_and_kept_only_when_clean():
    """start_response keeps the fields and status lines that passed its checks
    (herd.router.http.worker._CHECKED): a field seen before is sent as it was,
    one with a CR or LF is refused like pywsgi refuses it (no injected line
    reaches the client), however often a clean field of that name came first;
    and the table stays bounded."""
    from herd.router.http import worker

    answers = [
        ("200 OK", [("X-Model", "m"), ("Content-Length", "2")]),
        ("200 OK", [("X-Model", "m"), ("Content-Length", "2")]),
        ("200 OK", [("X-Model", "m\r\nX-Injected: 1"), ("Content-Length", "2")]),
        ("200 OK", [("X-Model", "m"), ("Content-Length", "2")]),
    ]

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        status, headers = answers.pop(0)
        start_response(status, headers)
        return [b"ok"]

    handler, client = _handler(app)
    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    try:
        first = _exchange(handler, client, request)
        second = _exchange(handler, client, request)
        client.sendall(request)
        handler.handle_one_request()
        refused = client.recv(65536)
        third = _exchange(handler, client, request)
    finally:
        handler._close()
        client.close()
    assert first.split(b"\r\nDate:")[0] == second.split(b"\r\nDate:")[0]
    assert first.startswith(b"HTTP/1.1 200 OK\r\nX-Model: m\r\nContent-Length: 2\r\n")
    assert first.endswith(b"\r\n\r\nok") and third.endswith(b"\r\n\r\nok")
    assert refused.startswith(b"HTTP/1.1 500 ") and b"X-Injected" not in refused
    assert ("X-Model", "m\r\nX-Injected: 1") not in worker._CHECKED
    assert ("X-Model", "m") in worker._CHECKED

    # A 204 with a body length goes through pywsgi's own start_response,
    # which refuses it, whatever the table holds.
    checked = worker._CHECKED
    with pytest.raises(AssertionError):
        worker.LeanHandler.start_response(
            _bare_handler(), "204 No Content", [("Content-Length", "2")]
        )
    # Bounded: full, it is emptied before the next entry.
    for n in range(worker._CHECKED_MAX + 5):
        worker._checked(checked, ("X-N", str(n)), n)
    assert len(checked) <= worker._CHECKED_MAX


def _bare_handler() -> LeanHandler:
    handler = LeanHandler.__new__(LeanHandler)
    handler.request_version = "HTTP/1.1"
    handler.code = None
    handler.headers_sent = False
    return handler
