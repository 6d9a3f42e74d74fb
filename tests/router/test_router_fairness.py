"""Fair turns on kept connections (SocketReader.take_turn in
herd/router/http/sockreader.py), in-process: the real handler class over a
real socket pair, no gunicorn."""

from __future__ import annotations

from typing import Any

import gevent

from tests.router.test_router_environ import _handler


def _get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode()


def _serve(app: Any, first: bytes, expected: int) -> list[str]:
    """Serve `first` (and whatever the app sends on) on one kept connection;
    the order of events the app recorded, once `expected` are in."""
    events: list[str] = []
    handler, client = _handler(lambda env, start: app(env, start, events, client))
    served = gevent.spawn(handler.handle)
    try:
        client.sendall(first)
        with gevent.Timeout(5):
            while len(events) < expected:
                client.recv(65536)
    finally:
        client.close()
        served.join(5)
    return events


def _answer(start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_a_next_request_already_arrived_waits_for_the_loop():
    # The client's next request is in the kernel before this answer is sent.
    # It is served only after a trip through the event loop (the other
    # greenlet spawned meanwhile runs first), never straight away: under load
    # a fast client would otherwise be served again and again while
    # connections that became ready before it wait.
    def app(env, start_response, events, client):
        path = env["PATH_INFO"]
        events.append(path)
        if path == "/first":
            client.sendall(_get("/second"))
            gevent.spawn(events.append, "another greenlet")
        return _answer(start_response)

    events = _serve(app, _get("/first"), 3)
    assert events == ["/first", "another greenlet", "/second"]


def test_pipelined_requests_in_the_buffer_are_served_without_a_wait():
    # Two requests in one write: the second is in the read buffer, not in the
    # kernel, so a readiness wait would never end; it is served at once.
    def app(env, start_response, events, client):
        events.append(env["PATH_INFO"])
        return _answer(start_response)

    events = _serve(app, _get("/one") + _get("/two") + _get("/three"), 3)
    assert events == ["/one", "/two", "/three"]


def test_a_request_head_split_over_writes_is_still_read():
    # The head's second half arrives after the first was buffered: the read
    # that needs more waits for it, then the request is served.
    def app(env, start_response, events, client):
        events.append(env["PATH_INFO"] + "?" + env["QUERY_STRING"])
        if env["QUERY_STRING"] == "a":
            client.sendall(b"GET /split?b HTTP/1.1\r\nHo")
            gevent.spawn_later(0.05, client.sendall, b"st: h\r\n\r\n")
        return _answer(start_response)

    events = _serve(app, _get("/split?a"), 2)
    assert events == ["/split?a", "/split?b"]


def test_a_body_already_arrived_is_read_without_a_loop_trip_per_chunk():
    # Only a request's first read takes its turn: the rest of a large body,
    # already in the kernel, is read straight on (the other greenlet spawned
    # before the read runs only after it).
    body = b"x" * 100_000

    def app(env, start_response, events, client):
        gevent.spawn(events.append, "another greenlet")
        got = env["wsgi.input"].read()
        events.append(f"body {len(got)}")
        return _answer(start_response)

    head = b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
    events = _serve(app, head + body, 2)
    assert events == ["body 100000", "another greenlet"]
