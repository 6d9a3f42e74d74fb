"""The router's HTTP/1.1 reader for node answers (herd.router.routing.nodewire),
driven through `Upstream` against a scripted node on a loopback socket: framing,
the strict refusals, and when a kept-alive connection is reused or retried."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from herd.router.routing.proxy import StreamBroken, Upstream, UpstreamFailure

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


class ScriptedNode:
    """A loopback server answering each request on a connection with the next
    scripted answer (bytes, or a callable given the socket); counts connections."""

    def __init__(self, answers: list[bytes | Callable[[socket.socket], None]]):
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                while self.answers:
                    request = _read_request(conn)
                    if request is None:
                        break
                    self.requests.append(request)
                    answer = self.answers.pop(0)
                    if callable(answer):
                        if answer(conn) is not True:  # True: keep the connection
                            break
                        continue
                    conn.sendall(answer)

    def close(self) -> None:
        self.server.close()


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            more = conn.recv(65536)
        except OSError:
            return None
        if not more:
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            while len(body) < length:
                body += conn.recv(65536)
    return data


@pytest.fixture
def node() -> Iterator[Callable[..., ScriptedNode]]:
    made: list[ScriptedNode] = []

    def make(*answers: bytes | Callable[[socket.socket], None]) -> ScriptedNode:
        made.append(ScriptedNode(list(answers)))
        return made[-1]

    yield make
    for n in made:
        n.close()


def _sized(body: bytes, head: bytes = OK_HEAD) -> bytes:
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def _chunked(*chunks: bytes, tail: bytes = b"0\r\n\r\n") -> bytes:
    out = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    for chunk in chunks:
        out += b"%x;ext=1\r\n%s\r\n" % (len(chunk), chunk)
    return out + tail


def test_framing_and_reuse(node):
    n = node(
        _sized(b'{"a":1}'),
        _chunked(b'{"x":1}\n{"y"', b":2}\n", tail=b"0\r\nX-Trailer: t\r\n\r\n"),
        b"HTTP/1.1 100 Continue\r\n\r\n" + _sized(b"{}"),
        b"HTTP/1.1 204 No Content\r\n\r\n",
    )
    up = Upstream()
    reply = up.open(n.url, "POST", "/api/chat", b'{"m":1}', network_s=5)
    assert (reply.status, reply.content_type) == (200, "application/json")
    assert reply.header("Content-Length") == "7"
    assert reply.read() == b'{"a":1}'
    reply.close()
    reply = up.open(n.url, "POST", "/api/chat", b"{}", network_s=5)
    assert list(reply.lines()) == [b'{"x":1}\n', b'{"y":2}\n']
    reply.close()
    reply = up.open(n.url, "GET", "/x", network_s=5)
    assert (reply.status, reply.read()) == (200, b"{}")
    reply.close()
    reply = up.open(n.url, "GET", "/y", network_s=5)
    assert (reply.status, reply.read()) == (204, b"")
    reply.close()
    # One connection served all four; the request head and body went as sent.
    assert n.connections == 1
    assert n.requests[0].endswith(b"Content-Length: 7\r\n\r\n" + b'{"m":1}')
    up.close()


def test_last_line_without_newline_and_read_to_close(node):
    n = node(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'{"a":1}\n{"b":2}')
    up = Upstream()
    reply = up.open(n.url, "GET", "/", network_s=5)
    assert list(reply.lines()) == [b'{"a":1}\n', b'{"b":2}']
    reply.close()
    up.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
)
def test_malformed_heads_are_refused(node, answer):
    n = node(answer)
    with pytest.raises(UpstreamFailure) as failure:
        Upstream().open(n.url, "GET", "/", network_s=5)
    assert failure.value.kind == "protocol"


@pytest.mark.parametrize(
    "answer",
    [
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 9000,
        OK_HEAD + b"Content-Length: 10\r\n\r\nshort",
    ],
)
def test_malformed_bodies_break_the_stream(node, answer):
    n = node(lambda conn: conn.sendall(answer))  # then the node closes
    reply = Upstream().open(n.url, "GET", "/", network_s=5)
    with pytest.raises(StreamBroken):
        reply.read()
    reply.close()


def test_stale_kept_alive_connection_is_retried_once(node):
    # The node answers, then closes that connection while it is idle: the
    # next request on it fails before any answer and goes out again on a
    # fresh connection.
    def answer_then_close(conn: socket.socket) -> None:
        conn.sendall(_sized(b"{}"))

    n = node(answer_then_close, _sized(b'{"again":1}'))
    up = Upstream()
    reply = up.open(n.url, "GET", "/", network_s=5)
    assert reply.read() == b"{}"
    reply.close()
    reply = up.open(n.url, "POST", "/api/chat", b'{"m":1}', network_s=5)
    assert reply.read() == b'{"again":1}'
    reply.close()
    assert n.connections == 2 and len(n.requests) == 2
    up.close()


def test_node_asking_to_close_is_not_reused(node):
    n = node(
        _sized(b"{}", OK_HEAD + b"Connection: close\r\n"),
        _sized(b"{}"),
    )
    up = Upstream()
    for _ in range(2):
        reply = up.open(n.url, "GET", "/", network_s=5)
        assert reply.read() == b"{}"
        reply.close()
    assert n.connections == 2
    up.close()


def test_silent_node_times_out(node):
    n = node(lambda conn: time.sleep(1))
    with pytest.raises(UpstreamFailure) as failure:
        Upstream().open(n.url, "GET", "/", network_s=0.3)
    assert failure.value.kind == "timeout"


def test_connection_given_back_after_forget_is_closed(node):
    # A node dropped from the fleet mid-request: its connection is closed
    # when the answer ends, never kept (nor reused by a later pool).
    n = node(_sized(b"{}"), _sized(b"{}"))
    up = Upstream()
    reply = up.open(n.url, "GET", "/", network_s=5)
    up.forget(lambda url: False)
    assert reply.read() == b"{}"
    reply.close()
    # The node serves one connection at a time: a kept first one would hold
    # the second request unanswered.
    reply = up.open(n.url, "GET", "/", network_s=2)
    assert reply.read() == b"{}"
    reply.close()
    assert n.connections == 2
    up.close()


def test_repeated_head_is_parsed_once_and_any_other_is_checked(node):
    # A node repeats its head bytes answer after answer: the connection's
    # last parse is reused for the very same bytes, and only for them.
    n = node(
        _sized(b'{"a":1}'),
        _sized(b'{"b":2}'),
        _sized(b"{}", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"),
        _sized(b"{}", b"HTTP/1.1 200 OK\r\nBad Name: x\r\n"),
    )
    up = Upstream()
    heads = []
    for body in (b'{"a":1}', b'{"b":2}', b"{}"):
        reply = up.open(n.url, "GET", "/", network_s=5)
        assert reply.read() == body
        heads.append(reply._fields)
        reply.close()
    assert heads[0] is heads[1] and heads[1] is not heads[2]
    assert heads[2]["content-type"] == "text/plain"
    with pytest.raises(UpstreamFailure) as failure:
        up.open(n.url, "GET", "/", network_s=5)
    assert failure.value.kind == "protocol"
    assert n.connections == 1
    up.close()


def test_a_try_that_finds_nothing_puts_off_the_next_ones(node, monkeypatch):
    # The first read of an answer is tried before any wait (a fast node has
    # often answered already). A try that finds nothing (the node answers
    # 30 ms late) is followed by the wait, and the next 1, 2, 4 ... answers
    # on the connection are awaited without a try; a try that finds the
    # answer ends that.
    import select

    from herd.router.routing import nodewire

    tries: list[str] = []
    hold = [False]  # the next try waits until the answer is in: a hit

    class Spy:
        def __init__(self, raw):
            self.raw = raw

        def recv(self, size):
            if hold[0]:
                select.select([self.raw], [], [], 5)
            try:
                data = self.raw.recv(size)
            except BlockingIOError:
                tries.append("miss")
                raise
            tries.append("hit")
            return data

    connect = nodewire.Pool.connect

    def spied(self):
        conn = connect(self)
        conn._raw = Spy(conn._raw)
        return conn

    monkeypatch.setattr(nodewire.Pool, "connect", spied)

    def late(conn: socket.socket) -> bool:
        time.sleep(0.03)
        conn.sendall(_sized(b"{}"))
        return True

    n = node(late, late, late, late, late, _sized(b"{}"), late)
    up = Upstream()
    for i in range(7):
        hold[0] = i == 5
        reply = up.open(n.url, "GET", "/", network_s=5)
        assert reply.read() == b"{}"
        reply.close()
    assert tries == ["miss", "miss", "hit", "miss"]  # answers 1, 3, 6, 7
    assert n.connections == 1
    up.close()


def test_a_body_in_memory_is_read_without_a_deadline(node, monkeypatch):
    # With the sweeper (the router's worker), every read that may block has
    # a deadline; a body that came with its head cannot block and has none.
    from herd.router.http.deadlines import Deadlines

    entered: list[float] = []
    enter = Deadlines.enter

    def spied(self, greenlet, deadline, droppable=False):
        entered.append(deadline)
        enter(self, greenlet, deadline, droppable)

    monkeypatch.setattr(Deadlines, "enter", spied)

    def late_body(conn: socket.socket) -> None:
        conn.sendall(OK_HEAD + b"Content-Length: 2\r\n\r\n")
        time.sleep(0.05)
        conn.sendall(b"{}")

    n = node(_sized(b'{"a":1}'), late_body)
    up = Upstream(swept=True)
    reply = up.open(n.url, "GET", "/", network_s=5)
    waits = len(entered)
    assert list(reply.lines()) == [b'{"a":1}']
    assert len(entered) == waits  # in memory: no deadline
    reply.close()
    reply = up.open(n.url, "GET", "/", network_s=5)
    waits = len(entered)
    assert reply.read() == b"{}"
    assert len(entered) > waits  # the body came late: its read had one
    reply.close()
    up.close()


def test_same_head_to_a_head_request_has_no_body(node):
    # The connection keeps its last head's framing, but only for the same
    # method: the same head bytes answering HEAD frame no body at all.
    sized = _sized(b"{}")
    n = node(sized, sized[: -len(b"{}")], sized)
    up = Upstream()
    for method, body in (("GET", b"{}"), ("HEAD", b""), ("GET", b"{}")):
        reply = up.open(n.url, method, "/", network_s=5)
        assert reply.read() == body
        reply.close()
    assert n.connections == 1
    up.close()


def test_a_one_line_body_in_memory_is_taken_whole(node):
    # The common small answer (one JSON object, Content-Length, in the same
    # read as its head) is taken in one piece; anything else is left for
    # `lines()` untouched: two lines, a chunked body, a body not yet in.
    def late_body(conn: socket.socket) -> None:
        conn.sendall(OK_HEAD + b"Content-Length: 8\r\n\r\n")
        time.sleep(0.05)
        conn.sendall(b'{"b":2}\n')

    n = node(
        _sized(b'{"a":1}\n'),
        _sized(b'{"a":1}\n{"b":2}'),
        _chunked(b'{"x":1}\n'),
        late_body,
    )
    up = Upstream()
    reply = up.open(n.url, "GET", "/", network_s=5)
    assert reply.whole_line() == b'{"a":1}\n'
    assert list(reply.lines()) == []
    reply.close()
    expected = ([b'{"a":1}\n', b'{"b":2}'], [b'{"x":1}\n'], [b'{"b":2}\n'])
    for lines in expected:
        reply = up.open(n.url, "GET", "/", network_s=5)
        assert reply.whole_line() is None
        assert list(reply.lines()) == lines
        reply.close()
    assert n.connections == 1  # each answer was read to its exact end
    up.close()
