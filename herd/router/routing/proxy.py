"""The upstream HTTP client: pooled keep-alive connections to nodes, made for gevent.

Requests are built here (a cached head prefix per route, the body appended)
and go out in one write; answers are read by herd.router.routing.nodewire, a
strict HTTP/1.1 reader straight off gevent sockets that costs a fraction of
a general client library per request.

Every call has a connect timeout and a network timeout that bounds both the
wait for the first byte and each idle gap while streaming. Only URLs the
`allow` callable accepts (the manifest's nodes) are ever connected to.

In the router's gunicorn worker (`Upstream(swept=True)`) the network timeout is
not a socket timeout: gevent starts and stops a timer for every blocking read
on a socket with a timeout (about 3 % of the worker's CPU per proxied
request). Instead the reading greenlet enters itself with its deadline in a
`Deadlines` table (herd.router.http.deadlines: two dict operations) and one
sweeping greenlet ends the reads that overran, within two of its sweeps
(2 * SWEEP_S). Elsewhere (tests driving the app in-process, from any thread)
plain socket timeouts apply.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from herd import hosts
from herd.errors import HerdError
from herd.router.routing.nodewire import Answer, Closed, Pool

POLL_TIMEOUT_S = 1.5
#: How long closing a finished stream waits for the end of the HTTP body.
DRAIN_S = 0.05


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

    __slots__ = (
        "_answer",
        "_pool",
        "_swept",
        "_fields",
        "status",
        "content_type",
        "_secrets",
    )

    def __init__(
        self,
        answer: Answer,
        pool: Pool,
        swept: _Swept | None = None,
        headers: dict[str, str] | None = None,
    ):
        self._answer: Answer | None = answer
        self._pool = pool
        self._swept = swept
        self._fields = answer.fields
        self.status: int = answer.status
        self.content_type: str = answer.fields.get("content-type") or ""
        #: The node's credentials (`Authorization: Bearer TOKEN`), never to be
        #: passed on: a node echoing a refused token in its error body.
        self._secrets = _secrets(headers) if headers and self.status >= 400 else ()

    def header(self, name: str) -> str | None:
        return self._fields.get(name.lower())

    def read(self) -> bytes:
        """The whole body (non-streaming answers)."""
        answer = self._answer
        if answer is None:
            return b""
        # A body already in memory needs no deadline (the common small answer).
        swept = None if answer.buffered else self._swept
        greenlet = swept.enter() if swept is not None else None
        try:
            data = answer.read()
            for secret in self._secrets:
                data = data.replace(secret, b"[redacted]")
            return data
        except Exception as ex:  # noqa: BLE001 - any socket/parse failure
            self._drop()
            raise StreamBroken(_describe(ex)) from ex
        finally:
            if swept is not None:
                swept.leave(greenlet)

    def whole_line(self) -> bytes | None:
        """The whole body if it is one line already read (see
        `Answer.whole_line`), else None and `lines()` reads it."""
        answer = self._answer
        return None if answer is None else answer.whole_line()

    def lines(self) -> Iterator[bytes]:
        """The body line by line (`\\n` kept), as soon as each line arrives;
        the last line may lack its `\\n` (a plain JSON body)."""
        answer = self._answer
        if answer is None:
            return
        readline = answer.readline
        swept = self._swept
        try:
            while True:
                if swept is None or answer.buffered:
                    line = readline()
                else:
                    greenlet = swept.enter()
                    try:
                        line = readline()
                    finally:
                        swept.leave(greenlet)
                if not line:
                    return
                yield line
        except Exception as ex:  # noqa: BLE001 - any socket/parse failure
            self._drop()
            raise StreamBroken(_describe(ex)) from ex

    def _drop(self) -> None:
        """Close the connection: its answer failed part-way."""
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.conn.close()

    def close(self) -> None:
        """Give the connection back to the pool, or close it if unfinished.

        After a stream's last line the end of the body (the chunked
        terminator) is normally already in flight: wait for it briefly (at
        most DRAIN_S, 64 KiB) so the kept-alive connection can be reused.
        """
        answer, self._answer = self._answer, None
        if answer is None:
            return
        if not answer.done and answer.keep:
            sock = answer.conn.sock
            try:
                sock.settimeout(DRAIN_S)
                drained = 0
                while not answer.done and drained < 65536:
                    drained += len(answer.piece())
                sock.settimeout(self._pool.timeout)
            except Exception:  # noqa: BLE001 - not finished in time: close it
                pass
        if answer.reusable:
            self._pool.put(answer.conn)
        else:
            answer.conn.close()


def _secrets(headers: dict[str, str]) -> tuple[bytes, ...]:
    """The secret part of each credential header (the token after `Bearer`)."""
    found = (value.split()[-1] for value in headers.values() if value.strip())
    return tuple(secret.encode("latin-1") for secret in found if len(secret) >= 4)


def _describe(ex: BaseException) -> str:
    if isinstance(ex, TimeoutError | socket.timeout):
        return "node stopped sending (idle timeout)"
    text = str(ex) or type(ex).__name__
    return f"{type(ex).__name__}: {text}"


class _Target:
    """A node URL's pool and the cached request-head prefixes for it."""

    __slots__ = ("pool", "path_prefix", "host_header", "heads")

    def __init__(self, pool: Pool, path_prefix: str, host_header: str):
        self.pool = pool
        self.path_prefix = path_prefix
        self.host_header = host_header
        #: (method, path) -> the request head's first lines, encoded.
        self.heads: dict[tuple[str, str], bytes] = {}

    def head(self, method: str, path: str) -> bytes:
        key = (method, path)
        prefix = self.heads.get(key)
        if prefix is None:
            prefix = self.heads[key] = (
                f"{method} {self.path_prefix}{path} HTTP/1.1\r\n"
                f"Host: {self.host_header}\r\nUser-Agent: herd-router\r\n"
            ).encode("latin-1")
        return prefix


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
        self._targets: dict[tuple[str, float, float], _Target] = {}
        self._swept = swept
        #: The sweeper and its clocks, made on first use (imports gevent).
        self._deadlines: Any = None
        self._current: Any = None
        self._monotonic: Any = None
        #: One `_Swept` per network timeout (a manifest has a few).
        self._swepts: dict[float, _Swept] = {}

    def set_allow(self, allow: Callable[[str], bool]) -> None:
        self._allow = allow

    def _target(self, url: str, connect_s: float, network_s: float) -> _Target:
        key = (url, connect_s, network_s)
        target = self._targets.get(key)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UpstreamFailure("connect", f"bad node URL {url!r}")
            # Connect to the address: a name is looked up in /etc/hosts once,
            # here, never through the system resolver (which may ask DNS).
            address = hosts.lookup(parts.hostname)
            if address is None:
                raise UpstreamFailure("connect", hosts.unresolvable(parts.hostname))
            tls = parts.scheme == "https"
            pool = Pool(
                address,
                parts.port or (443 if tls else 80),
                connect_s=connect_s,
                timeout=None if self._swept else network_s,
                tls_hostname=parts.hostname if tls else None,
            )
            target = self._targets[key] = _Target(
                pool, parts.path.rstrip("/"), parts.netloc
            )
        return target

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
        # (The lookups inlined: a known node and timeout, on every request.)
        target = self._targets.get((url, connect_s, network_s)) or self._target(
            url, connect_s, network_s
        )
        swept = greenlet = None
        if self._swept:
            swept = self._swepts.get(network_s) or self._sweeper(network_s)
            greenlet = swept.enter()
        try:
            answer = self._exchange(target, method, path, body, headers)
        except TimeoutError as ex:
            raise UpstreamFailure("timeout", f"{url}: no answer in time") from ex
        except ConnectionRefusedError as ex:
            raise UpstreamFailure("connect", f"{url}: connection refused") from ex
        except OSError as ex:
            kind = "connect" if ex.errno in _CONNECT_ERRNOS else "protocol"
            raise UpstreamFailure(kind, f"{url}: {_describe(ex)}") from ex
        except Exception as ex:  # noqa: BLE001 - malformed answers, closed connections
            raise UpstreamFailure("protocol", f"{url}: {_describe(ex)}") from ex
        finally:
            if swept is not None:
                swept.leave(greenlet)
        return Reply(answer, target.pool, swept, headers)

    def _sweeper(self, network_s: float) -> _Swept:
        swept = self._swepts.get(network_s)
        if swept is None:
            deadlines = self._deadlines
            if deadlines is None:
                import time

                from greenlet import getcurrent

                from herd.router.http.deadlines import Deadlines

                deadlines = self._deadlines = Deadlines()
                self._current, self._monotonic = getcurrent, time.monotonic
            swept = _Swept(deadlines, network_s, self._current, self._monotonic)
            self._swepts[network_s] = swept
        return swept

    def _exchange(
        self,
        target: _Target,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str] | None,
    ) -> Answer:
        """Send one request on a kept-alive connection and read the answer's head.

        The request head is built from a cached prefix (method, path, Host,
        User-Agent) and goes out with the body in one write. A kept-alive
        connection the node closed while idle fails before any byte of an
        answer: that request was never processed, so it is sent once more on
        a fresh connection.
        """
        prefix = target.head(method, path)
        if headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            prefix += extra.encode("latin-1")
        if body:
            data = _POST_HEAD % (
                prefix,
                len(body),
                body,
            )
        else:
            data = prefix + b"\r\n"
        pool = target.pool
        conn = pool.get()
        while True:
            try:
                # One plain send takes a request this small; gevent's sendall
                # would first ask the kernel for the buffer size (a syscall).
                sent = conn.sock.send(data)
                if sent < len(data):
                    conn.sock.sendall(memoryview(data)[sent:])
                return Answer(conn, method)
            except (Closed, OSError) as ex:
                conn.close()
                stale = isinstance(ex, Closed) or ex.errno in _STALE_ERRNOS
                if not (conn.reused and stale):
                    raise
            except BaseException:
                conn.close()
                raise
            # An idle connection the node had closed: so may the others be.
            pool.drop_idle()
            conn = pool.connect()

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
        target = self._target(url, connect_s, network_s)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = target.head("POST", path) + (
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
        ).encode("latin-1")
        pool = target.pool
        started = False
        conn = None
        # Every send and the wait for the answer's head end by `network_s`
        # (a node that stops reading the upload, or never answers, would
        # otherwise hold the request and its node slot for ever). Not the
        # reads of `chunks`: the client's body has its own deadline.
        swept = self._sweeper(network_s) if self._swept else None

        def bounded(call: Callable[..., Any], *args: Any) -> Any:
            if swept is None:
                return call(*args)
            greenlet = swept.enter()
            try:
                return call(*args)
            finally:
                swept.leave(greenlet)

        try:
            # A fresh connection: an idle pooled one the node closed would
            # fail after the upload began, when it can no longer be retried.
            conn = pool.connect()
            sock = conn.sock
            bounded(sock.sendall, head)
            for chunk in chunks:
                started = True
                if chunk:
                    bounded(sock.sendall, b"%x\r\n%s\r\n" % (len(chunk), chunk))
            bounded(sock.sendall, b"0\r\n\r\n")
            answer = bounded(Answer, conn, "POST")
            return Reply(answer, pool, swept, headers)
        except Exception as ex:  # noqa: BLE001 - socket errors, the source's errors
            if conn is not None:
                conn.close()
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
        finally:
            reply.close()
        if reply.status != 200:
            raise UpstreamFailure("protocol", f"{url}{path}: HTTP {reply.status}")
        try:
            return json.loads(data)
        except ValueError as ex:
            raise UpstreamFailure("protocol", f"{url}{path}: not JSON") from ex

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Close pools to URLs that are no longer nodes (after a reload)."""
        for key in [k for k in self._targets if not keep(k[0])]:
            self._targets.pop(key).pool.close()

    def close(self) -> None:
        for target in self._targets.values():
            target.pool.close()
        self._targets.clear()


#: The rest of a request head with a JSON body, then the body.
_POST_HEAD = b"%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
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
