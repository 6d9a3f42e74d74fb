"""The raw stream under a client connection's buffered reader (the worker's rfile).

pywsgi reads a connection through `sock.makefile("rb")`: a BufferedReader over
`socket.SocketIO` over gevent's socket. Each refill of the buffer then runs
three Python frames (SocketIO.readinto, its readable check, gevent's
recv_into) before the one system call. `SocketReader` is the same read in one
frame, with the same behaviour: it waits in gevent's hub while nothing has
arrived (the deadlines of herd.router.http.deadlines, or the socket's own
timeout, end the wait), returns 0 at the end of the stream, and refuses to
read again after a timed-out read. Like SocketIO it holds a reference on the
socket, so that closing the socket while the reader is open does not close
the connection.

One difference, on purpose: a request's first read waits its turn. gevent's
read tries first and waits only when nothing has arrived; under load that is
unfair, since a connection whose next request is already in the kernel when
its answer goes out is served again at once, with no trip through the event
loop, while connections that became ready before it wait (at 64 connections
the worker's p99 was ten times its p50). So the handler sets `take_turn`
before each request's first read, and that read waits for the loop to see the
socket readable before reading. An idle client, the usual case at low load,
also costs one system call and one exception less (the read that finds
nothing). The reads after it in the same request (the rest of a head, a body)
try first: a large body already in the kernel is not read one loop trip per
chunk. Bytes already buffered (a pipelined request) are read without any wait:
the buffer calls this only when it is empty.
"""

from __future__ import annotations

import io
from typing import Any


class SocketReader(io.RawIOBase):
    """Reads a gevent socket for an `io.BufferedReader`."""

    #: The next read waits for readiness before trying (see above).
    take_turn = True

    def __init__(self, sock: Any):
        super().__init__()
        self._sock = sock
        self._timed_out = False
        sock._io_refs += 1

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def readinto(self, buffer: Any) -> int:
        sock = self._sock
        if self._timed_out:
            raise OSError("cannot read from timed out object")
        if self.take_turn:
            self.take_turn = False
            if sock.timeout != 0.0:
                self._wait(sock)
        while True:
            try:
                # (gevent's socket keeps the native, non-blocking one as
                # `_sock`; a closed one answers EBADF.)
                return sock._sock.recv_into(buffer)
            except BlockingIOError:
                if sock.timeout == 0.0:
                    raise
            self._wait(sock)

    def _wait(self, sock: Any) -> None:
        try:
            sock._wait(sock._read_event)
        except TimeoutError:
            self._timed_out = True
            raise

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._sock._decref_socketios()
