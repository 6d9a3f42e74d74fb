"""The raw stream under a client connection's buffered reader (the worker's rfile).

pywsgi reads a connection through `sock.makefile("rb")`: a BufferedReader over
`socket.SocketIO` over gevent's socket. Each refill of the buffer then runs
three Python frames (SocketIO.readinto, its readable check, gevent's
recv_into) before the one system call; a lone request on an idle keep-alive
connection refills it once or twice. `SocketReader` is the same read in one
frame, with the same behaviour: it waits in gevent's hub while nothing has
arrived (the deadlines of herd.router.http.deadlines, or the socket's own
timeout, end the wait), returns 0 at the end of the stream, and refuses to
read again after a timed-out read. Like SocketIO it holds a reference on the
socket, so that closing the socket while the reader is open does not close
the connection.
"""

from __future__ import annotations

import io
from typing import Any


class SocketReader(io.RawIOBase):
    """Reads a gevent socket for an `io.BufferedReader`."""

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
        while True:
            try:
                # (gevent's socket keeps the native, non-blocking one as
                # `_sock`; a closed one answers EBADF.)
                return sock._sock.recv_into(buffer)
            except BlockingIOError:
                if sock.timeout == 0.0:
                    raise
            try:
                sock._wait(sock._read_event)
            except TimeoutError:
                self._timed_out = True
                raise

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._sock._decref_socketios()
