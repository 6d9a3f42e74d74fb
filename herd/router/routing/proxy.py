"""The upstream HTTP client: pooled keep-alive connections to nodes, made for gevent.

Built on geventhttpclient (a C HTTP parser over gevent sockets with a
connection pool per host), which costs a fraction of urllib3/http.client per
request. It is imported on first use, never at module import, so importing the
router app stays free of side effects before gevent patches the process.

Every call has a connect timeout and a network timeout that bounds both the
wait for the first byte and each idle gap while streaming. Only URLs the
`allow` callable accepts (the manifest's nodes) are ever connected to.
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


_RESPONSE_CLASSES: tuple[Any, Any] | None = None


def _response_classes() -> tuple[Any, Any]:
    """geventhttpclient's (HTTPConnectionClosed, HTTPSocketPoolResponse), imported
    on first use (never at module import: see the module docstring)."""
    global _RESPONSE_CLASSES
    if _RESPONSE_CLASSES is None:
        from geventhttpclient.response import (
            HTTPConnectionClosed,
            HTTPSocketPoolResponse,
        )

        _RESPONSE_CLASSES = (HTTPConnectionClosed, HTTPSocketPoolResponse)
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


class Reply:
    """One node's answer: status and headers read, body still on the socket."""

    def __init__(self, response: Any):
        self._response = response
        self.status: int = response.status_code
        self.content_type: str = response.get("content-type") or ""

    def header(self, name: str) -> str | None:
        value = self._response.get(name)
        return value if isinstance(value, str) or value is None else value[0]

    def read(self) -> bytes:
        """The whole body (non-streaming answers)."""
        try:
            return bytes(self._response.read())
        except Exception as ex:  # noqa: BLE001 - any socket/parse failure
            self.close()
            raise StreamBroken(_describe(ex)) from ex

    def lines(self) -> Iterator[bytes]:
        """The body line by line (`\\n` kept), as soon as each line arrives."""
        response = self._response
        readline = response.readline
        try:
            while True:
                line = readline(b"\n")
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


def _describe(ex: BaseException) -> str:
    if isinstance(ex, TimeoutError | socket.timeout):
        return "node stopped sending (idle timeout)"
    text = str(ex) or type(ex).__name__
    return f"{type(ex).__name__}: {text}"


class Upstream:
    """Keep-alive pools to node URLs, one per (URL, timeouts)."""

    def __init__(self, allow: Callable[[str], bool] | None = None):
        self._allow = allow or (lambda url: True)
        self._clients: dict[tuple[str, float, float], Any] = {}

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
                network_timeout=network_s,
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
        return Reply(response)

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
        started = False
        sock = None
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
            sock.sendall(head)
            for chunk in chunks:
                started = True
                if chunk:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
            return Reply(response_type(sock, pool, block_size=BLOCK_SIZE))
        except Exception as ex:  # noqa: BLE001 - socket errors, the source's errors
            if sock is not None:
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
