"""The upstream HTTP client: pooled keep-alive connections to nodes, made for gevent.

Built on geventhttpclient (a C HTTP parser over gevent sockets with a
connection pool per host), which costs a fraction of urllib3/http.client per
request. It is imported on first use, never at module import, so importing the
router app stays free of side effects before gevent patches the process.

Every call has a connect timeout and a network timeout that bounds both the
wait for the first byte and each idle gap while streaming. Only URLs the
`allow` callable accepts (the manifest's nodes) are ever connected to.

In the router's gunicorn worker (`Upstream(swept=True)`) the network timeout is
not a socket timeout: gevent starts and stops a timer for every blocking read
on a socket with a timeout (about 3 % of the worker's CPU per proxied
request). Instead the reading greenlet enters itself with its deadline in a
`Deadlines` table (herd.router.http.deadlines: two dict operations) and one
sweeping greenlet ends the reads that overran, within its SWEEP_S. Elsewhere
(tests driving the app in-process, from any thread) plain socket timeouts
apply.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from herd import hosts
from herd.errors import HerdError

POLL_TIMEOUT_S = 1.5
BLOCK_SIZE = 16 * 1024
#: How long closing a finished stream waits for the end of the HTTP body.
DRAIN_S = 0.05


#: Most bytes of a node's response head (its header names and values).
MAX_HEAD_BYTES = 64 * 1024
#: Most bytes of a node's answer the router holds at once: a whole answer read
#: in one piece, or one line or event of a stream (a generated image in base64
#: fits). A node sending more (a hostile or broken one) gets a protocol error.
MAX_HELD_BYTES = 128 * 1024 * 1024

_RESPONSE_CLASSES: tuple[Any, Any] | None = None


class NodeAnswerTooLarge(Exception):
    """A node's response head or held body went past MAX_HEAD/HELD_BYTES."""


def _response_classes() -> tuple[Any, Any]:
    """geventhttpclient's HTTPConnectionClosed and its pooled response class
    bounded by MAX_HEAD_BYTES and MAX_HELD_BYTES, imported on first use (never
    at module import: see the module docstring)."""
    global _RESPONSE_CLASSES
    if _RESPONSE_CLASSES is None:
        from geventhttpclient.response import (
            HTTPConnectionClosed,
            HTTPSocketPoolResponse,
        )

        class Bounded(HTTPSocketPoolResponse):  # type: ignore[misc]
            _head_bytes = 0

            def _on_header_field(self, string: str) -> None:
                self._count_head(string)
                super()._on_header_field(string)

            def _on_header_value(self, string: str) -> None:
                self._count_head(string)
                super()._on_header_value(string)

            def _count_head(self, string: str) -> None:
                self._head_bytes += len(string)
                if self._head_bytes > MAX_HEAD_BYTES:
                    raise NodeAnswerTooLarge(
                        f"response headers over {MAX_HEAD_BYTES // 1024} KiB"
                    )

            def readline(self, sep: bytes = b"\n") -> bytes:
                """The next line (`sep`, one byte, kept), b"" at the end. Unlike
                the base class it scans each byte once: a line that never ends
                costs linear time up to MAX_HELD_BYTES, not quadratic."""
                start = 0
                while True:
                    buf = self._body_buffer
                    at = buf.find(sep, start)
                    if at >= 0:
                        line = bytes(buf[: at + 1])
                        del buf[: at + 1]
                        return line
                    start = len(buf)
                    if self.message_complete:
                        return b""
                    sock = self._sock
                    if sock is None:
                        raise HTTPConnectionClosed("connection closed.")
                    try:
                        self.feed(sock.recv(self.block_size))
                    except BaseException:
                        self.release()
                        raise

            def _on_body(self, buf: bytearray) -> None:
                self._body_buffer += buf
                if len(self._body_buffer) > MAX_HELD_BYTES:
                    raise NodeAnswerTooLarge(
                        f"answer (or one line of it) over {MAX_HELD_BYTES >> 20} MiB"
                    )

        _RESPONSE_CLASSES = (HTTPConnectionClosed, Bounded)
    return _RESPONSE_CLASSES


def _open(sock: Any) -> bool:
    return sock is not None and sock.fileno() >= 0


def _drop_idle(pool: Any) -> None:
    """Close every idle pooled connection (the node restarted or closed them)."""
    queue = pool._socket_queue
    while not queue.empty():
        try:
            queue.get(block=False).close()
        except Exception:  # noqa: BLE001 - empty queue or already closed
            return


def _no_delay(sock: Any) -> None:
    """Requests go out in one write; never let Nagle hold a small one back."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class UpstreamFailure(Exception):
    """A node failed before answering: safe to retry on another node.

    `kind` is "connect" (refused, unreachable: the node is down), "timeout"
    (no first byte in time), or "protocol" (the node's answer was not HTTP).
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class UploadBroken(Exception):
    """Sending a streamed upload to a node failed after it began."""


class StreamBroken(Exception):
    """A node failed after its answer started (idle timeout, reset, garbage)."""


class _Swept:
    """A greenlet's reads on node sockets, each bounded by `network_s`, kept by
    a `Deadlines` sweeper (see the module docstring)."""

    __slots__ = ("deadlines", "network_s", "current", "monotonic")

    def __init__(self, deadlines: Any, network_s: float, current: Any, clock: Any):
        self.deadlines = deadlines
        self.network_s = network_s
        self.current = current
        self.monotonic = clock

    def enter(self) -> Any:
        greenlet = self.current()
        self.deadlines.enter(greenlet, self.monotonic() + self.network_s)
        return greenlet

    def leave(self, greenlet: Any) -> None:
        self.deadlines.leave(greenlet)


class Reply:
    """One node's answer: status and headers read, body still on the socket."""

    def __init__(
        self,
        response: Any,
        swept: _Swept | None = None,
        headers: dict[str, str] | None = None,
    ):
        self._response = response
        self._swept = swept
        self.status: int = response.status_code
        self.content_type: str = response.get("content-type") or ""
        #: The node's credentials (`Authorization: Bearer TOKEN`), never to be
        #: passed on: a node echoing a refused token in its error body.
        self._secrets = _secrets(headers) if headers and self.status >= 400 else ()

    def header(self, name: str) -> str | None:
        value = self._response.get(name)
        return value if isinstance(value, str) or value is None else value[0]

    def read(self) -> bytes:
        """The whole body (non-streaming answers)."""
        swept = self._swept
        greenlet = swept.enter() if swept is not None else None
        try:
            data = bytes(self._response.read())
            for secret in self._secrets:
                data = data.replace(secret, b"[redacted]")
            return data
        except Exception as ex:  # noqa: BLE001 - any socket/parse failure
            self.close()
            raise StreamBroken(_describe(ex)) from ex
        finally:
            if swept is not None:
                swept.leave(greenlet)

    def lines(self) -> Iterator[bytes]:
        """The body line by line (`\\n` kept), as soon as each line arrives."""
        response = self._response
        readline = response.readline
        swept = self._swept
        try:
            while True:
                if swept is None:
                    line = readline(b"\n")
                else:
                    greenlet = swept.enter()
                    try:
                        line = readline(b"\n")
                    finally:
                        swept.leave(greenlet)
                if not line:
                    # A last line without "\n" (a plain JSON body) stays in
                    # the parser's buffer; hand it out too.
                    rest = bytes(response._body_buffer)
                    del response._body_buffer[:]
                    if rest:
                        yield rest
                    return
                yield line
        except Exception as ex:  # noqa: BLE001 - any socket/parse failure
            self.close()
            raise StreamBroken(_describe(ex)) from ex

    def close(self) -> None:
        """Give the connection back to the pool, or drop it if unfinished.

        After a stream's last line the end of the body (the chunked
        terminator) is normally already in flight: wait for it briefly so the
        kept-alive connection can be reused.
        """
        response = self._response
        sock = response._sock
        if sock is not None and not response.message_complete:
            try:
                sock.settimeout(DRAIN_S)
                while (
                    not response.message_complete and len(response._body_buffer) < 65536
                ):
                    if not response.readline(b"\n"):
                        break
                sock.settimeout(
                    response._pool.network_timeout if response._pool else None
                )
            except Exception:  # noqa: BLE001 - not finished in time: drop it
                pass
        if response._sock is not None and not response.message_complete:
            # An unfinished body cannot be reused: close instead of returning.
            pool, sock = response._pool, response._sock
            response._sock = response._pool = None
            if pool is not None:
                pool.release_socket(sock)
            return
        response.release()


def _secrets(headers: dict[str, str]) -> tuple[bytes, ...]:
    """The secret part of each credential header (the token after `Bearer`)."""
    found = (value.split()[-1] for value in headers.values() if value.strip())
    return tuple(secret.encode("latin-1") for secret in found if len(secret) >= 4)


def _describe(ex: BaseException) -> str:
    if isinstance(ex, TimeoutError | socket.timeout):
        return "node stopped sending (idle timeout)"
    text = str(ex) or type(ex).__name__
    return f"{type(ex).__name__}: {text}"


class Upstream:
    """Keep-alive pools to node URLs, one per (URL, timeouts).

    `swept`: network timeouts are kept by a deadline sweeper instead of socket
    timeouts (the router's gevent worker: see the module docstring). Only
    for one thread's event loop.
    """

    def __init__(
        self, allow: Callable[[str], bool] | None = None, *, swept: bool = False
    ):
        self._allow = allow or (lambda url: True)
        self._clients: dict[tuple[str, float, float], Any] = {}
        self._swept = swept
        #: The sweeper and its clocks, made on first use (imports gevent).
        self._deadlines: Any = None
        self._current: Any = None
        self._monotonic: Any = None

    def set_allow(self, allow: Callable[[str], bool]) -> None:
        self._allow = allow

    def _client(self, url: str, connect_s: float, network_s: float) -> Any:
        key = (url, connect_s, network_s)
        client = self._clients.get(key)
        if client is None:
            from geventhttpclient import HTTPClient

            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UpstreamFailure("connect", f"bad node URL {url!r}")
            # Connect to the address: a name is looked up in /etc/hosts once,
            # here, never through the system resolver (which may ask DNS).
            address = hosts.lookup(parts.hostname)
            if address is None:
                raise UpstreamFailure("connect", hosts.unresolvable(parts.hostname))
            client = HTTPClient(
                address,
                port=parts.port or (443 if parts.scheme == "https" else 80),
                ssl=parts.scheme == "https",
                connection_timeout=connect_s,
                network_timeout=None if self._swept else network_s,
                # The router bounds concurrency per node itself (queues.py).
                concurrency=65536,
                headers={"User-Agent": "herd-router"},
            )
            client.path_prefix = parts.path.rstrip("/")
            client.host_header = parts.netloc
            client.heads = {}
            pool = client._connection_pool
            pool.after_connect = _no_delay
            # geventhttpclient select()s every pooled socket before reuse; a
            # node that closed an idle connection is caught by the retry in
            # `_exchange` instead, which saves a syscall and a greenlet
            # switch per request.
            pool._is_socket_alive = _open
            self._clients[key] = client
        return client

    def open(
        self,
        url: str,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        connect_s: float = 3.0,
        network_s: float = 120.0,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Send a request; return once the status and headers arrived.

        Raises UpstreamFailure when nothing usable came back (retryable).
        """
        if not self._allow(url):
            raise UpstreamFailure("connect", f"{url} is not a node of this fleet")
        client = self._client(url, connect_s, network_s)
        swept = self._sweeper(network_s) if self._swept else None
        greenlet = swept.enter() if swept is not None else None
        try:
            response = self._exchange(client, method, path, body, headers)
        except TimeoutError as ex:
            raise UpstreamFailure("timeout", f"{url}: no answer in time") from ex
        except ConnectionRefusedError as ex:
            raise UpstreamFailure("connect", f"{url}: connection refused") from ex
        except OSError as ex:
            kind = "connect" if ex.errno in _CONNECT_ERRNOS else "protocol"
            raise UpstreamFailure(kind, f"{url}: {_describe(ex)}") from ex
        except Exception as ex:  # noqa: BLE001 - parse errors, closed connections
            raise UpstreamFailure("protocol", f"{url}: {_describe(ex)}") from ex
        finally:
            if swept is not None:
                swept.leave(greenlet)
        return Reply(response, swept, headers)

    def _sweeper(self, network_s: float) -> _Swept:
        deadlines = self._deadlines
        if deadlines is None:
            import time

            from greenlet import getcurrent

            from herd.router.http.deadlines import Deadlines

            deadlines = self._deadlines = Deadlines()
            self._current, self._monotonic = getcurrent, time.monotonic
        return _Swept(deadlines, network_s, self._current, self._monotonic)

    def _exchange(
        self,
        client: Any,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str] | None,
    ) -> Any:
        """Send one request on a pooled connection and read the response head.

        The request head is built from a cached prefix (method, path, Host,
        User-Agent) and sent with the body in one write. A kept-alive
        connection the node closed while idle gives "connection closed" before
        any byte: that request was never processed, so it is sent once more
        on a fresh connection.
        """
        closed, response_type = _response_classes()
        key = (method, path)
        prefix = client.heads.get(key)
        if prefix is None:
            prefix = client.heads[key] = (
                f"{method} {client.path_prefix}{path} HTTP/1.1\r\n"
                f"Host: {client.host_header}\r\nUser-Agent: herd-router\r\n"
            ).encode("latin-1")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if body:
            data = (
                b"%sContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                % (
                    prefix,
                    extra.encode("latin-1"),
                    len(body),
                    body,
                )
            )
        else:
            data = prefix + extra.encode("latin-1") + b"\r\n"
        pool = client._connection_pool
        for attempt in (1, 2):
            sock = pool.get_socket()
            try:
                # One plain send takes a request this small; gevent's sendall
                # would first ask the kernel for the buffer size (a syscall).
                sent = sock.send(data)
                if sent < len(data):
                    sock.sendall(memoryview(data)[sent:])
            except OSError as ex:
                pool.release_socket(sock)
                if attempt == 2 or ex.errno not in _STALE_ERRNOS:
                    raise
                _drop_idle(pool)
                continue
            try:
                return response_type(sock, pool, block_size=BLOCK_SIZE, method=method)
            except closed:
                # Closed before any byte of an answer: the node never took
                # the request (an idle connection it had closed). The
                # response released the socket already.
                if attempt == 2:
                    raise
                _drop_idle(pool)
        raise AssertionError("unreachable")

    def upload(
        self,
        url: str,
        path: str,
        content_type: str,
        chunks: Iterator[bytes],
        *,
        connect_s: float = 3.0,
        network_s: float = 120.0,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """POST a body produced as it streams (chunked transfer encoding);
        return once the node's status and headers arrived.

        The connection is never reused for the next request if sending
        failed part-way. Raises UpstreamFailure before the body's first chunk
        was taken (safe to retry elsewhere), else UploadBroken.
        """
        if not self._allow(url):
            raise UpstreamFailure("connect", f"{url} is not a node of this fleet")
        client = self._client(url, connect_s, network_s)
        _, response_type = _response_classes()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"POST {client.path_prefix}{path} HTTP/1.1\r\n"
            f"Host: {client.host_header}\r\nUser-Agent: herd-router\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n"
            f"{extra}\r\n"
        ).encode("latin-1")
        pool = client._connection_pool
        started = handed = False
        sock = None
        # Every send and the wait for the answer's head end by `network_s`
        # (a node that stops reading the upload, or never answers, would
        # otherwise hold the request and its node slot for ever). Not the
        # reads of `chunks`: the client's body has its own deadline.
        swept = self._sweeper(network_s) if self._swept else None

        def bounded(call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
            if swept is None:
                return call(*args, **kw)
            greenlet = swept.enter()
            try:
                return call(*args, **kw)
            finally:
                swept.leave(greenlet)

        try:
            # A fresh connection (a pool slot all the same): an idle pooled
            # one the node closed would fail after the upload began, when it
            # can no longer be retried.
            pool._semaphore.acquire()
            try:
                sock = pool._create_socket()
            except BaseException:
                pool._semaphore.release()
                raise
            bounded(sock.sendall, head)
            for chunk in chunks:
                started = True
                if chunk:
                    bounded(sock.sendall, b"%x\r\n%s\r\n" % (len(chunk), chunk))
            bounded(sock.sendall, b"0\r\n\r\n")
            handed = True  # a failing response gives the socket back itself
            response = bounded(response_type, sock, pool, block_size=BLOCK_SIZE)
            return Reply(response, swept, headers)
        except Exception as ex:  # noqa: BLE001 - socket errors, the source's errors
            if handed and sock is not None:
                sock.close()  # never reused: it may have gone back to the pool
            elif sock is not None:
                pool.release_socket(sock)
            if isinstance(ex, HerdError):
                raise  # the source refused the client's body (e.g. bad multipart)
            if not started:
                kind = "timeout" if isinstance(ex, TimeoutError) else "connect"
                raise UpstreamFailure(kind, f"{url}: {_describe(ex)}") from ex
            raise UploadBroken(f"{url}: {_describe(ex)}") from ex

    def get_json(
        self,
        url: str,
        path: str,
        timeout: float = POLL_TIMEOUT_S,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """GET a small JSON document (the health poller); raises UpstreamFailure."""
        import json

        reply = self.open(
            url, "GET", path, connect_s=timeout, network_s=timeout, headers=headers
        )
        try:
            data = reply.read()
        except StreamBroken as ex:
            raise UpstreamFailure("protocol", f"{url}{path}: {ex}") from ex
        if reply.status != 200:
            raise UpstreamFailure("protocol", f"{url}{path}: HTTP {reply.status}")
        try:
            return json.loads(data)
        except ValueError as ex:
            raise UpstreamFailure("protocol", f"{url}{path}: not JSON") from ex

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Close pools to URLs that are no longer nodes (after a reload)."""
        for key in [k for k in self._clients if not keep(k[0])]:
            self._clients.pop(key).close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


_STALE_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED})
_CONNECT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EADDRNOTAVAIL,
        errno.ECONNRESET,
        errno.ECONNABORTED,
    }
)
