"""The gunicorn worker class for the router: gevent's pywsgi behind a strict front door.

Everything here runs before any route or ACL, on every connection:

- **Request head** (httphead.py): strict request line and header fields, caps
  on line, field count and the whole head, unambiguous body framing (RFC 9112
  §6). A refused head is answered with a plain-text error (400, 408, 414, 431,
  505) and the connection is closed: bytes after a bad head never run as a
  next request.
- **Deadlines**: a client has HERD_HEADER_TIMEOUT seconds from the accepted
  connection (or from the first byte of a later request) to send the whole
  head, and HERD_BODY_TIMEOUT seconds from then for the body (httpbody.py); an
  idle keep-alive connection is closed after gunicorn's `keepalive`
  (HERD_KEEPALIVE). Kept by one sweeping greenlet per worker (deadlines.py),
  not a timer per wait.
- **Per-address cap** (frontdoor.py): one client address holds at most
  HERD_CLIENT_CONNECTIONS connections per worker; more get 503 and are closed.
- **Bodies**: Content-Length or chunked, de-chunked for the app; the unread
  rest of a body is discarded only when small, else the connection is closed.
- **Shutdown**: a stopping worker closes idle keep-alive connections at once and
  lets requests in flight finish (gunicorn's graceful_timeout).
- **Logs**: a refused request is one line with the client address, the status
  and a fixed reason, never bytes the client sent.
- **No DNS**: SERVER_NAME is the bind address as given (frontdoor.py).

And two speed-ups over gunicorn's `gevent_pywsgi` worker: the header parser is
not `http.client`'s (the `email` feed parser costs a third of the worker's CPU
per proxied request) and the WSGI environ is built from the parsed fields; each
response's head and first body chunk go out in one `send`.

Imported only by gunicorn when it loads the worker class (etc/gunicorn.conf.py).
"""

from __future__ import annotations

import functools
import io
import logging
import socket as stdsocket
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import gevent
from gevent.pywsgi import format_date_time
from gevent.socket import socket as GeventSocket
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler

from herd.router.http.frontdoor import FrontDoor, RouterServer
from herd.router.http.httpbody import BodyInput
from herd.router.http.httphead import (
    CHUNKED,
    MAX_HEAD,
    MAX_REQUEST_LINE,
    HeaderBlock,
    HeadError,
    body_framing,
    parse_request_line,
    read_fields,
    split_head,
)
from herd.router.http.sockreader import SocketReader

log = logging.getLogger("herd.router.http.worker")

#: Body chunks up to this size are sent together with the response head.
MERGE_MAX = 65536
#: After an error answer, read and drop what the client still sends for this
#: long (and this much) before closing, so that the client sees the answer
#: rather than a connection reset.
LINGER_S = 1.0
LINGER_BYTES = 1 << 20

#: Environ key of each field name seen ("": not passed on), bounded.
_ENV_KEYS: dict[str, str] = {}
#: Response fields the worker acts on (lower-case names).
_SPECIAL = frozenset(("content-length", "date", "connection"))
#: Fields with keys of their own: the type is CONTENT_TYPE (its first value, as
#: pywsgi), the length is passed as parsed (CONTENT_LENGTH, from the framing).
_CGI_KEYS = {"content-type": "CONTENT_TYPE", "content-length": ""}
_unquote_latin1 = functools.partial(unquote, encoding="latin-1")


def source_of(address: Any) -> str:
    """The client address a connection counts against (IPv4-mapped IPv6 as IPv4)."""
    host = address[0] if isinstance(address, tuple) else str(address)
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _error_response(status: int, reason: str) -> bytes:
    body = reason.encode() + b"\n"
    return b"HTTP/1.1 %d %s\r\nConnection: close\r\n" % (
        status,
        HTTPStatus(status).phrase.encode(),
    ) + b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


_BUSY = _error_response(503, "too many connections from this address")


class LeanHandler(PyWSGIHandler):
    """One client connection: the front door's checks, then pywsgi's request
    handling (each response's head and first chunk in one write)."""

    _served = False
    _linger = False
    _env_base: dict[str, Any] | None = None

    # -- the connection ------------------------------------------------------

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None):
        if rfile is None and type(sock) is GeventSocket:
            # pywsgi's `sock.makefile("rb", -1)`, one Python frame per read
            # instead of three, and each request's first read in its turn
            # (sockreader.py). Anything else (TLS) keeps its makefile.
            rfile = io.BufferedReader(SocketReader(sock))
        super().__init__(sock, address, server, rfile)

    def handle(self) -> None:
        server = self.server
        source = source_of(self.client_address)
        if not server.admit(source):
            self._busy()
            return
        self._accepted = time.monotonic()
        try:
            while self.handle_one_request():
                pass
        finally:
            server.release(source)
            self._close()

    def _busy(self) -> None:
        """Refuse a connection over the per-address cap: 503 and close."""
        self.server.note_refused(source_of(self.client_address))
        sock = self.socket
        try:
            sock.settimeout(0)
            sock.send(_BUSY)
            sock.recv(16384)  # what already arrived, so close sends no reset
        except OSError:
            pass
        self._linger = False
        self._close()

    def _close(self) -> None:
        sock = self.__dict__.pop("socket", None)
        rfile = self.__dict__.pop("rfile", None)
        self.__dict__.pop("wsgi_input", None)
        self.__dict__.pop("_env_base", None)  # (it holds the socket too)
        if sock is None:
            return
        try:
            if self._linger:
                self._drain(sock)
        finally:
            try:
                # The file first: while it is open (the environ of a failed
                # request can keep it alive), closing the socket would not
                # close the connection.
                if rfile is not None:
                    rfile.close()
                sock.close()
            except OSError:
                pass

    @staticmethod
    def _drain(sock: Any) -> None:
        """After an error answer: stop sending, read and drop for a moment."""
        deadline = time.monotonic() + LINGER_S
        drained = 0
        try:
            sock.shutdown(stdsocket.SHUT_WR)
            while drained < LINGER_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                data = sock.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass

    # -- one request ---------------------------------------------------------

    def handle_one_request(self) -> bool:
        """Read one request head within its deadline, answer it; True to go on
        with the next request on this connection."""
        server = self.server
        door = server.frontdoor
        rfile = self.rfile
        if self._served:
            if server.closing:
                return False
            started = None
            deadline = time.monotonic() + door.keepalive
        else:
            started = self._accepted
            deadline = started + door.header_timeout
        # Wait for the first byte: an idle keep-alive connection, or a fresh
        # one that has not said anything yet. Closed quietly when it times out
        # (or at once when the worker stops).
        raw = rfile.raw
        if raw.__class__ is SocketReader:
            raw.take_turn = True
        current = gevent.getcurrent()
        deadlines = server.deadlines
        deadlines.enter(current, deadline, True)
        try:
            buffered = rfile.peek(1)
        except OSError:
            return False
        finally:
            deadlines.leave(current)
        if not buffered:
            return False
        if started is None:
            started = time.monotonic()
        try:
            # (peek gives all that is buffered.)
            size = split_head(buffered)
            if size and buffered[:1] not in (b"\r", b"\n"):
                # The whole head is in memory already (the usual case): parse
                # it in one piece, no timer needed since nothing can block.
                self._parse_head(rfile.read(size).decode("latin-1"))
                self._buffered = len(buffered) - size
            else:
                self._read_head_within(started + door.header_timeout)
                self._buffered = 0
        except HeadError as ex:
            self._refuse(ex)
            return False
        except OSError:
            return False
        self.environ = self.get_environ()
        self.application = server.application
        self.handle_one_response()
        self._served = True
        if self.wsgi_input.broken:  # an unread or bad body: answered, now close
            self._linger = True
            return False
        return not (self.close_connection or rfile.closed)

    def _read_head_within(self, deadline: float) -> None:
        current = gevent.getcurrent()
        deadlines = self.server.deadlines
        deadlines.enter(current, deadline)
        try:
            self._read_head()
        except TimeoutError:  # the deadline passed (herd.router.http.deadlines)
            raise HeadError(408, "request head not received in time") from None
        finally:
            deadlines.leave(current)

    def _read_head(self) -> None:
        """Read the head line by line, within the caps (it may still arrive)."""
        rfile = self.rfile
        line = rfile.readline(MAX_REQUEST_LINE + 1)
        if line in (b"\r\n", b"\n"):  # RFC 9112 §2.2: ignore one empty line
            line = rfile.readline(MAX_REQUEST_LINE + 1)
        if len(line) > MAX_REQUEST_LINE:
            raise HeadError(414, "request line too long")
        if not line.endswith(b"\n"):
            raise HeadError(0, "connection closed inside the request line")
        fields = read_fields(rfile, MAX_HEAD - len(line))
        self._parse_head(line.decode("latin-1") + fields + "\n")

    def _parse_head(self, head: str) -> None:
        """Parse a whole head (request line, field lines, blank line)."""
        end = head.index("\n") + 1
        self.command, self.path, version = parse_request_line(head[:end])
        self.request_version = version
        blank = 2 if head.endswith("\r\n") else 1
        self.headers = headers = HeaderBlock(head[end:-blank])
        self._framing = body_framing(headers, version)
        self.content_length = None if self._framing == CHUNKED else self._framing
        conn = headers.first.get("connection")
        if version == "HTTP/1.1":
            close = conn is not None and "close" in _tokens(conn)
        else:
            close = conn is None or "keep-alive" not in _tokens(conn)
        self.close_connection = close or self.server.frontdoor.keepalive <= 0

    def _refuse(self, ex: HeadError) -> None:
        """Answer a refused head with its status and reason, then close."""
        self.close_connection = True
        if not ex.status:  # the client went away mid-head
            return
        if self._refusal_logged():
            log.info(
                "refused a request from %s: %d %s",
                source_of(self.client_address),
                ex.status,
                ex.reason,
            )
        try:
            self.socket.settimeout(LINGER_S)
            self.socket.sendall(_error_response(ex.status, ex.reason))
        except OSError:
            return
        self._linger = True

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """pywsgi's hook for bad client input: a body-free log line (pywsgi's
        own quotes the raw request line, which can be anyone's body bytes)."""
        if self._refusal_logged():
            log.info(
                "refused a request from %s: 400 %s",
                source_of(self.client_address),
                type(ex).__name__,
            )
        self.close_connection = True
        return ("400", _error_response(400, "bad request"))

    def _refusal_logged(self) -> bool:
        """Within the router's refusal log budget (herd.router.runtime), so a
        flood of malformed heads cannot flood the log."""
        rt = getattr(self.server.application, "herd_runtime", None)
        return rt is None or rt.refusal_recorded(rt.monotonic())

    def get_environ(self) -> dict[str, Any]:
        """The WSGI environ, built from the parsed fields (pywsgi re-splits
        formatted header lines; gunicorn adds `gunicorn.sock` and `RAW_URI`)."""
        base = self._env_base
        if base is None:
            base = self._env_base = self._connection_environ()
        env = base.copy()
        path = self.path
        env["REQUEST_METHOD"] = self.command
        if "?" in path:
            plain, env["QUERY_STRING"] = path.split("?", 1)
        else:
            plain, env["QUERY_STRING"] = path, ""
        env["PATH_INFO"] = _unquote_latin1(plain) if "%" in plain else plain
        env["SERVER_PROTOCOL"] = self.request_version
        env["RAW_URI"] = path
        for name, value in self.headers.fields:
            key = _ENV_KEYS.get(name)
            if key is None:
                # A name with "_" would be confused with a dash: dropped, as
                # pywsgi does (kept as "", so that it is skipped).
                key = _CGI_KEYS.get(name.lower())
                if key is None:
                    key = "" if "_" in name else "HTTP_" + name.upper()
                    key = key.replace("-", "_")
                if len(_ENV_KEYS) < 1024:
                    _ENV_KEYS[name] = key
            if not key:
                continue
            if key in env:
                if key != "CONTENT_TYPE":
                    env[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
            else:
                env[key] = value
        framing = self._framing
        if framing is not None and framing != CHUNKED:
            env["CONTENT_LENGTH"] = str(framing)
        expect = env.get("HTTP_EXPECT")
        sock = self.socket if expect and expect.lower() == "100-continue" else None
        self.wsgi_input = BodyInput(
            self.rfile,
            self.content_length,
            sock,
            framing == CHUNKED,
            self.server.frontdoor.body_timeout,
            self.server.deadlines,
            self._buffered,
        )
        env["wsgi.input"] = self.wsgi_input
        return env

    def _connection_environ(self) -> dict[str, Any]:
        """The part of the environ every request on this connection shares."""
        env = self.server.get_environ()
        env["SCRIPT_NAME"] = ""
        env["gunicorn.sock"] = self.socket
        env["wsgi.input_terminated"] = True
        address = self.client_address
        if isinstance(address, tuple):
            env["REMOTE_ADDR"] = str(address[0])
            env["REMOTE_PORT"] = str(address[1])
        return env

    # -- the response --------------------------------------------------------

    def log_request(self) -> None:
        """gunicorn's access line, not even built while gunicorn's access log
        is off (herd writes its own: herd.router.observe.accesslog)."""
        if self.server.access_log_enabled:
            super().log_request()

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        """pywsgi's start_response in one pass over the headers, with the same
        checks (native strings, no CR or LF, latin-1); anything unusual (an
        error to raise, exc_info, HTTP/1.0) goes through pywsgi's own."""
        if exc_info is not None or self.request_version != "HTTP/1.1":
            return super().start_response(status, headers, exc_info)
        out = []
        special: dict[str, str] = {}
        checked = _CHECKED
        try:
            for header, value in headers:
                # A field checked before (equal strings: the same result) is
                # not checked and encoded again: most responses repeat the
                # same few fields.
                pair = (header, value)
                fields = checked.get(pair)
                if fields is None:
                    fields = _checked(checked, pair, _check_field(header, value))
                lower = fields[1]
                if lower is not None:
                    special[lower] = value
                out.append(fields[0])
            line = checked.get(status)
            if line is None:
                line = _checked(checked, status, _check_status(status))
            code, encoded = line
        except (TypeError, ValueError, AttributeError, UnicodeError):
            # Not str, CR/LF, not latin-1, a bad status: pywsgi raises the
            # error that names what is wrong.
            return super().start_response(status, headers, exc_info)
        length = special.get("content-length")
        if code in (204, 304) and length not in (None, "0"):
            return super().start_response(status, headers, exc_info)
        self.status = encoded
        self._orig_status = status
        self.response_headers = out
        self.code = code
        self.provided_date = special.get("date")
        self.provided_content_length = length
        if special.get("connection") == "close":
            self.close_connection = True
        return self.write

    def process_result(self) -> None:
        """A whole response body in one piece (falcon's `resp.data`, `resp.media`,
        an error): status line, headers and body in one buffer, one `send`.
        Anything else (streams, empty or large bodies) takes pywsgi's path."""
        result = self.result
        if (
            type(result) is list
            and len(result) == 1
            and self.status
            and not self.headers_sent
            and self.code not in (204, 304)
        ):
            data = result[0]
            if 0 < len(data) <= MERGE_MAX and type(data) is bytes:
                self._write_whole(data)
                return
        super().process_result()

    def _write_whole(self, data: bytes) -> None:
        """pywsgi's finalize_headers + _write_with_headers for a body known in
        full: Date, Content-Length (unless given), Connection: close when
        closing, then one write."""
        self.headers_sent = True
        headers = self.response_headers
        if self.provided_date is None:
            headers.append((b"Date", _http_date()))
            self.provided_date = True
        if self.provided_content_length is None:
            headers.append((b"Content-Length", b"%d" % len(data)))
        if self.server.closing:
            self.close_connection = True
        if self.close_connection and self.request_version == "HTTP/1.1":
            if not any(h.lower() == b"connection" for h, _ in headers):
                headers.append((b"Connection", b"close"))
        parts = [b"HTTP/1.1 ", self.status, b"\r\n"]
        for header, value in headers:
            parts += (header, b": ", value, b"\r\n")
        parts += (b"\r\n", data)
        self._sendall(b"".join(parts))

    def finalize_headers(self) -> None:
        if self.provided_date is None:
            # pywsgi formats the Date header anew for every response.
            self.response_headers.append((b"Date", _http_date()))
            self.provided_date = True
        super().finalize_headers()
        if self.server.closing:
            self.close_connection = True
        if self.close_connection and self.request_version == "HTTP/1.1":
            if not any(h.lower() == b"connection" for h, _ in self.response_headers):
                self.response_headers.append((b"Connection", b"close"))

    def _sendall(self, data: Any) -> None:
        """pywsgi's `_sendall`, with one plain `send` first (small responses
        fit the socket buffer: no `getsockopt`, no chunking loop)."""
        sock = self.socket
        try:
            try:
                # (The native non-blocking socket: gevent's `send` is a Python
                # frame around it, and waits only when the buffer is full.)
                sent = sock._sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                sock.sendall(memoryview(data)[sent:])
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def _write_with_headers(self, data: Any) -> None:
        """Status line, headers and the first body chunk in one write."""
        if data and len(data) > MERGE_MAX:
            super()._write_with_headers(data)
            return
        self.headers_sent = True
        self.finalize_headers()
        out = bytearray(b"HTTP/1.1 ")
        out += self.status
        out += b"\r\n"
        for header, value in self.response_headers:
            out += header
            out += b": "
            out += value
            out += b"\r\n"
        out += b"\r\n"
        if data:
            if self.response_use_chunked:
                out += b"%x\r\n" % len(data)
                out += data
                out += b"\r\n"
            else:
                out += data
        self._sendall(out)


#: Response fields and status lines that passed `start_response`'s checks,
#: with what it makes of them (`_check_field`, `_check_status`); emptied when
#: full (many lengths), so the fields every response repeats come back.
_CHECKED: dict[Any, Any] = {}
_CHECKED_MAX = 1024


def _check_field(header: str, value: str) -> tuple[tuple[bytes, bytes], str | None]:
    """A response field encoded, and its lower-case name if the worker acts on
    it; raises (ValueError, AttributeError, UnicodeError) for anything
    pywsgi's start_response must decide."""
    # (Printable: no CR, LF or other control character. A TAB or an unusual
    # character takes pywsgi's path, which decides.)
    if not (value.isprintable() and header.isprintable()):
        raise ValueError
    lower = header.lower()
    encoded = (header.encode("latin-1"), value.encode("latin-1"))
    return encoded, lower if lower in _SPECIAL else None


def _check_status(status: str) -> tuple[int, bytes]:
    """The status line's code and bytes; raises as `_check_field`."""
    if not status.isprintable():
        raise ValueError
    return int(status.split(" ", 1)[0]), status.encode("latin-1")


def _checked(table: dict[Any, Any], key: Any, value: Any) -> Any:
    """`value`, kept in `table` under `key`."""
    if len(table) >= _CHECKED_MAX:
        table.clear()
    table[key] = value
    return value


_date: tuple[int, bytes] = (-1, b"")


def _http_date() -> bytes:
    """The Date header's value, formatted once per second."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, format_date_time(second))
    return _date[1]


def _tokens(value: str) -> list[str]:
    return [part.strip(" \t") for part in value.lower().split(",")]


class RouterWorker(GeventPyWSGIWorker):
    """`worker_class` of the router (etc/gunicorn.conf.py)."""

    wsgi_handler = LeanHandler

    def run(self) -> None:
        door = FrontDoor.from_settings(self.cfg.keepalive, self.worker_connections)
        self.server_class = functools.partial(RouterServer, frontdoor=door)
        super().run()
