"""HTTP/1.1 to a node: kept-alive connections and a strict, lean answer reader.

The router sends every request to a node as one write it built itself
(proxy.py) and reads the answer here: the status line, the header fields,
then the body, framed by `Content-Length`, by chunked transfer coding, or by
the end of the connection: all the HTTP the router needs from a node, read
off the socket for a fraction of a general client's cost (bench_upstream.py).

Strict where a lax reader could be steered or held:

- the head (status line and fields) is at most MAX_HEAD bytes and
  MAX_FIELDS fields; a field name with white space, an obs-folded line, a
  malformed or conflicting `Content-Length`, `Content-Length` together with
  `Transfer-Encoding`, or any transfer coding but a single `chunked` are
  refused (ProtocolError), as is a chunk-size line over MAX_LINE bytes;
- interim 1xx answers are skipped (at most MAX_INTERIM of them);
- a connection is reused only after its answer was read to the exact end,
  with nothing after it, and only when the node did not ask to close it.

Time limits are the caller's: every blocking read is on a socket whose timeout
(or the deadline sweeper, see proxy.py) bounds it. Sockets are gevent's, so
the reader cooperates with the router's event loop whether or not the
process is monkey-patched. gevent is imported on first connect, never at
module import.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

#: Status line plus header fields, bytes.
MAX_HEAD = 64 * 1024
#: Header fields in one answer.
MAX_FIELDS = 100
#: A chunk-size line (with extensions) or a trailer field, bytes.
MAX_LINE = 8 * 1024
#: Trailer section after the last chunk, bytes.
MAX_TRAILERS = 64 * 1024
#: Interim (1xx) answers skipped before the final one.
MAX_INTERIM = 8
#: Most bytes of a node's answer the router holds at once: a whole answer read
#: in one piece, or one line or event of a stream (a generated image in base64
#: fits). A node sending more (a hostile or broken one) gets TooLarge.
MAX_HELD = 128 * 1024 * 1024
#: One recv.
BLOCK = 64 * 1024
#: Most answers awaited without a first try after one that found nothing.
MAX_SKIP = 64
#: Idle connections kept per node pool (more are closed when released).
MAX_IDLE = 256

_NONE, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3

#: A parsed answer head: HTTP version, status, fields (lowercase names).
Head = tuple[str, int, Mapping[str, str]]


class ProtocolError(Exception):
    """The node's answer is not HTTP/1.1 as the router reads it."""


class TooLarge(ProtocolError):
    """An answer read whole, or one line of a stream, went past MAX_HELD."""


class Closed(ProtocolError):
    """The connection ended before the first byte of an answer."""


class Conn:
    """One connection to a node: its socket and the bytes read but not used."""

    __slots__ = (
        "sock",
        "buf",
        "reused",
        "last_head",
        "last_framing",
        "_wait",
        "_raw",
        "_skip",
        "_backoff",
    )

    def __init__(self, sock: Any, plain: bool = False):
        self.sock = sock
        self.buf = b""
        #: True once taken from the idle pool (the node may have closed it).
        self.reused = False
        #: The last answer head read here: its bytes and their parse.
        self.last_head: tuple[bytes, Head] | None = None
        #: That head's framing: (head, method, keep, mode, length).
        self.last_framing: tuple[Head, str, bool, int, int] | None = None
        #: Waits until the socket is readable: gevent's own wait, the one its
        #: recv makes after an empty-handed try (EAGAIN); and the
        #: non-blocking socket under it, for a try that never waits. Only
        #: for a plain gevent socket: TLS may hold records a readiness wait
        #: cannot see.
        self._wait: Any = None
        self._raw: Any = None
        if plain and hasattr(sock, "_wait") and hasattr(sock, "_read_event"):
            self._wait = sock._wait
            self._raw = getattr(sock, "_sock", None)
        #: Answers still to await without a try first, and how many the
        #: last empty-handed try put off (see `first_bytes`).
        self._skip = 0
        self._backoff = 0

    def first_bytes(self) -> bytes:
        """The first bytes of an answer (b"": the node closed), blocking for
        them (within the read's time limit).

        The read is tried before any wait: a node that answers at once has
        often answered by the time its request's send returns (loopback: the
        node runs on another core), and the wait for readiness is a round
        trip through the event loop. A try that finds nothing costs a
        syscall and an exception, so after one the next 1, 2, 4 ... up to
        MAX_SKIP answers on this connection are awaited without a try: a
        node that takes its time (generating) costs one empty-handed try
        every MAX_SKIP answers."""
        raw = self._raw
        if raw is None:
            return self.sock.recv(BLOCK)
        if self._skip:
            self._skip -= 1
        else:
            try:
                data = raw.recv(BLOCK)
            except BlockingIOError:
                self._skip = self._backoff = min(self._backoff * 2 or 1, MAX_SKIP)
            else:
                self._backoff = 0
                return data
        self._wait(self.sock._read_event)
        return self.sock.recv(BLOCK)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Pool:
    """Idle kept-alive connections to one node address, reused last-in first-out.

    `timeout` is every socket's read timeout (None: the caller's sweeper
    bounds reads instead); `connect_s` bounds the TCP (and TLS) handshake.
    """

    def __init__(
        self,
        address: str,
        port: int,
        *,
        connect_s: float,
        timeout: float | None,
        tls_hostname: str | None = None,
    ):
        self.address = address
        self.port = port
        self.connect_s = connect_s
        self.timeout = timeout
        self.tls_hostname = tls_hostname
        self.idle: list[Conn] = []
        #: Set by close(): connections given back afterwards are closed.
        self.closed = False
        self._tls: Any = None

    def get(self) -> Conn:
        """An idle connection (marked `reused`), else a new one."""
        idle = self.idle
        if idle:
            conn = idle.pop()
            conn.reused = True
            return conn
        return self.connect()

    def connect(self) -> Conn:
        """A new connection; raises OSError (refused, unreachable, timeout)."""
        from gevent import socket as gsocket

        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = gsocket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_s)
            sock.connect((self.address, self.port))
            # Requests go out in one write; never let Nagle hold one back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls_hostname is not None:
                sock = self._tls_context().wrap_socket(
                    sock, server_hostname=self.tls_hostname
                )
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        return Conn(sock, plain=self.tls_hostname is None)

    def _tls_context(self) -> Any:
        if self._tls is None:
            from gevent import ssl as gssl

            # The system's trust store (where a site installs its own CA),
            # host name checked.
            self._tls = gssl.create_default_context()
        return self._tls

    def put(self, conn: Conn) -> None:
        """Keep a connection whose last answer was read to its end."""
        if not self.closed and len(self.idle) < MAX_IDLE:
            self.idle.append(conn)
        else:
            conn.close()

    def drop_idle(self) -> None:
        """Close every idle connection (the node closed or restarted)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def close(self) -> None:
        """Close the idle connections, and each busy one when it is given back
        (the node left the fleet, or the router stops)."""
        self.closed = True
        self.drop_idle()


class Answer:
    """A node's answer on `conn`: head parsed, body read on demand.

    `piece()` returns the body's next bytes as they arrive (b"" at its end),
    `readline()` the next line (`\\n` kept; the last one may lack it),
    `read()` the rest. `done` is True once the body was read to its end.
    """

    __slots__ = (
        "conn",
        "status",
        "fields",
        "keep",
        "done",
        "_mode",
        "_left",
        "_crlf",
        "_pending",
    )

    def __init__(self, conn: Conn, method: str):
        self.conn = conn
        self._pending = b""
        self._crlf = False
        head = _read_head(conn)
        status = head[1]
        if 100 <= status < 200:
            head = _final_head(conn, head)
            status = head[1]
        self.status = status
        self.fields = head[2]
        # The same parsed head (conn.last_head) frames its body the same way.
        framed = conn.last_framing
        if framed is None or framed[0] is not head or framed[1] != method:
            framed = conn.last_framing = (head, method, *_framing(head, method))
        _, _, self.keep, self._mode, self._left = framed
        self.done = self._mode == _NONE or (self._mode == _LENGTH and not self._left)

    def piece(self) -> bytes:
        """The body's next bytes (blocking for them), b"" once it ended."""
        if self._pending:
            out, self._pending = self._pending, b""
            return out
        if self.done:
            return b""
        mode = self._mode
        conn = self.conn
        if mode == _LENGTH:
            buf = conn.buf or _recv(conn, "the body")
            left = self._left
            if len(buf) >= left:
                conn.buf = buf[left:]
                self._left = 0
                self.done = True
                return buf[:left]
            conn.buf = b""
            self._left = left - len(buf)
            return buf
        if mode == _CLOSE:
            buf = conn.buf or conn.sock.recv(BLOCK)
            conn.buf = b""
            if not buf:
                self.done = True
            return buf
        return self._chunk()

    def _chunk(self) -> bytes:
        conn = self.conn
        while not self._left:
            if self._crlf:
                if _line(conn, MAX_LINE, "a chunk"):
                    raise ProtocolError("chunk data longer than its size")
                self._crlf = False
            size = _chunk_size(_line(conn, MAX_LINE, "a chunk size"))
            if size == 0:
                _trailers(conn)
                self.done = True
                return b""
            self._left = size
            self._crlf = True
        buf = conn.buf or _recv(conn, "a chunk")
        left = self._left
        if len(buf) > left:
            conn.buf = buf[left:]
            self._left = 0
            return buf[:left]
        conn.buf = b""
        self._left = left - len(buf)
        return buf

    def readline(self) -> bytes:
        """The next body line with its `\\n`; the last may lack one; b"" at the end."""
        pending = self._pending
        at = pending.find(b"\n")
        if at >= 0:
            self._pending = pending[at + 1 :]
            return pending[: at + 1]
        self._pending = b""
        parts = [pending] if pending else []
        held = len(pending)
        while True:
            piece = self.piece()
            if not piece:
                return b"".join(parts)
            at = piece.find(b"\n")
            if at >= 0:
                self._pending = piece[at + 1 :]
                parts.append(piece[: at + 1])
                return b"".join(parts)
            parts.append(piece)
            held += len(piece)
            if held > MAX_HELD:
                raise TooLarge(f"one line of the answer over {MAX_HELD >> 20} MiB")

    def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        held = 0
        while True:
            piece = self.piece()
            if not piece:
                return b"".join(parts)
            parts.append(piece)
            held += len(piece)
            if held > MAX_HELD:
                raise TooLarge(f"answer over {MAX_HELD >> 20} MiB")

    def whole_line(self) -> bytes | None:
        """The rest of the body when it is already in memory and one line
        (a `\\n` at most at its end), taken; else None and nothing taken.
        The common small answer (one JSON object with a Content-Length):
        no line-by-line reading for it."""
        if self.done or self._mode != _LENGTH or self._pending:
            return None
        conn = self.conn
        buf = conn.buf
        left = self._left
        if len(buf) < left:
            return None
        at = buf.find(b"\n", 0, left)
        if 0 <= at < left - 1:
            return None
        conn.buf = buf[left:]
        self._left = 0
        self.done = True
        return buf[:left]

    @property
    def buffered(self) -> bool:
        """The rest of the body is in memory: reading it cannot block."""
        return self.done or (self._mode == _LENGTH and len(self.conn.buf) >= self._left)

    @property
    def reusable(self) -> bool:
        """Read to its exact end, nothing after it, and the node keeps it open."""
        return self.done and self.keep and not self.conn.buf


def _framing(head: Head, method: str) -> tuple[bool, int, int]:
    """(keep the connection, body framing mode, Content-Length) of an answer."""
    version, status, fields = head
    connection = fields.get("connection", "").lower()
    keep = (
        "close" not in connection
        if version == "HTTP/1.1"
        else "keep-alive" in connection
    )
    coding = fields.get("transfer-encoding")
    length = fields.get("content-length")
    if method == "HEAD" or status in (204, 304):
        return keep, _NONE, 0
    if coding is not None:
        if length is not None:
            raise ProtocolError("answer has both Content-Length and chunked")
        if coding.strip().lower() != "chunked":
            raise ProtocolError(f"unsupported transfer coding {coding[:40]!r}")
        return keep, _CHUNKED, 0
    if length is not None:
        return keep, _LENGTH, _content_length(length)
    return False, _CLOSE, 0


def _final_head(conn: Conn, head: Head) -> Head:
    """The final answer's head after the interim (1xx) one `head`."""
    for _ in range(MAX_INTERIM):
        if head[1] == 101:
            raise ProtocolError("node switched protocols")
        head = _read_head(conn)
        if not 100 <= head[1] < 200:
            return head
    if head[1] == 101:
        raise ProtocolError("node switched protocols")
    raise ProtocolError("too many interim (1xx) answers")


def _recv(conn: Conn, what: str) -> bytes:
    data = conn.sock.recv(BLOCK)
    if not data:
        raise ProtocolError(f"node closed the connection in {what}")
    return data


def _read_head(conn: Conn) -> Head:
    """The next answer head off the connection, parsed. A node answers with
    the same head bytes again and again (its Date changes once a second):
    the same bytes as the connection's last head reuse that parse."""
    buf = conn.buf
    if not buf:
        # The common case: the whole head in the first read.
        buf = conn.first_bytes()
        if not buf:
            raise Closed("node closed the connection before answering")
    end = buf.find(b"\r\n\r\n")
    while end < 0:
        if len(buf) > MAX_HEAD:
            raise ProtocolError(f"answer head over {MAX_HEAD} bytes")
        data = conn.sock.recv(BLOCK)
        if not data:
            raise ProtocolError("node closed the connection in the answer head")
        # Search only where the terminator can newly appear.
        start = max(len(buf) - 3, 0)
        buf += data
        end = buf.find(b"\r\n\r\n", start)
    if end > MAX_HEAD:
        raise ProtocolError(f"answer head over {MAX_HEAD} bytes")
    conn.buf = buf[end + 4 :]
    head = buf[:end]
    last = conn.last_head
    if last is not None and last[0] == head:
        return last[1]
    parsed = _parse_head(head)
    conn.last_head = (head, parsed)
    return parsed


def _parse_head(head: bytes) -> Head:
    """A head's status line and fields, checked; the fields read-only (a
    parsed head is kept for the connection's next answer)."""
    # Decoded once as a whole (latin-1 maps every byte to one character):
    # cheaper than decoding each name and value.
    lines = head.decode("latin-1").split("\r\n")
    if len(lines) > MAX_FIELDS + 1:
        raise ProtocolError(f"answer has over {MAX_FIELDS} header fields")
    parts = lines[0].split(" ", 2)
    version = parts[0]
    if (
        len(parts) < 2
        or version not in ("HTTP/1.1", "HTTP/1.0")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
        or not parts[1].isascii()
    ):
        raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:60]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or _WHITE.search(name):
            raise ProtocolError(f"malformed header field {line[:60]!r}")
        key = name.lower()
        text = value.strip(" \t")
        seen = fields.get(key)
        if seen is None:
            fields[key] = text
        elif key == "content-length":
            if seen != text:
                raise ProtocolError("answer has conflicting Content-Length fields")
        elif key == "transfer-encoding":
            fields[key] = f"{seen}, {text}"
    return version, int(parts[1]), MappingProxyType(fields)


#: White space in a field name (an obs-folded line starts with some): the
#: ASCII white space bytes.strip() removes, as one class.
_WHITE = re.compile(r"[ \t\n\r\x0b\x0c]")


def _content_length(text: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 18:
        raise ProtocolError(f"malformed Content-Length {text[:40]!r}")
    return int(text)


def _line(conn: Conn, limit: int, what: str) -> bytes:
    """The next CRLF-ended line off the connection (without its CRLF)."""
    buf = conn.buf
    end = buf.find(b"\r\n")
    while end < 0:
        if len(buf) > limit:
            raise ProtocolError(f"{what} line over {limit} bytes")
        start = max(len(buf) - 1, 0)
        buf += _recv(conn, what)
        end = buf.find(b"\r\n", start)
    if end > limit:
        raise ProtocolError(f"{what} line over {limit} bytes")
    conn.buf = buf[end + 2 :]
    return buf[:end]


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip(b" \t")
    if not size or len(size) > 15 or size.strip(b"0123456789abcdefABCDEF"):
        raise ProtocolError(f"malformed chunk size {line[:40]!r}")
    return int(size, 16)


def _trailers(conn: Conn) -> None:
    """Skip the trailer section after the last chunk (up to its blank line)."""
    total = 0
    while True:
        line = _line(conn, MAX_LINE, "a trailer")
        if not line:
            return
        total += len(line) + 2
        if total > MAX_TRAILERS:
            raise ProtocolError(f"trailers over {MAX_TRAILERS} bytes")
