"""The request body reader of the router's worker: pywsgi's, with a deadline.

`BodyInput` is what the app gets as `wsgi.input`. It reads a Content-Length or
a chunked body (de-chunked) through pywsgi's reader, within HERD_BODY_TIMEOUT
seconds of the end of the request head, and turns what can go wrong into herd
errors that the app answers in its own error format: a slow body is 408, bad
chunk framing or a body cut short is 400, each with `Connection: close`. The
error text never quotes body bytes (pywsgi's does). After the response, what
the app left unread is discarded only when small; otherwise `broken` is set
and the worker closes the connection rather than read an unbounded rest.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from gevent import pywsgi

from herd.errors import HerdError, InvalidRequest, RequestTimeout
from herd.router.http.deadlines import Deadlines

#: A body the app left unread is read and dropped up to this size (keeping the
#: connection); more, and the connection is closed instead.
DISCARD_MAX = 65536

_CLOSE = {"Connection": "close"}


class BodyInput(pywsgi.Input):
    """pywsgi's request body reader, under the body deadline, with its errors
    turned into herd errors (so the app answers 400/408 in its own format) and
    a bounded discard of what the app left unread. `broken` means the
    connection cannot carry another request."""

    __slots__ = ("broken", "deadline", "deadlines", "in_memory", "timeout")

    def __init__(
        self,
        rfile: Any,
        length: int | None,
        sock: Any,
        chunked: bool,
        timeout: float,
        deadlines: Deadlines,
        buffered: int = 0,
    ):
        """`buffered`: bytes known to be in `rfile`'s buffer already; a body
        that fits is read as is (nothing can block)."""
        super().__init__(rfile, length, socket=sock, chunked_input=chunked)
        self.deadlines = deadlines
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.broken = False
        self.in_memory = not chunked and length is not None and length <= buffered

    def read(self, length: int | None = None) -> bytes:
        if self.in_memory and self.socket is None:
            # pywsgi's _do_read without its layers: the body is in rfile's
            # buffer already, so this read cannot block or come up short.
            left = self.content_length - self.position
            if length is None or length < 0 or length > left:
                length = left
            if not length:
                return b""
            data = self.rfile.read(length)
            self.position += len(data)
            if len(data) < length:  # (never: the bytes were counted)
                self.broken = True
                raise InvalidRequest("incomplete request body", headers=_CLOSE)
            return data
        return self._guarded(super().read, length)

    def readline(self, size: int | None = None) -> bytes:
        return self._guarded(super().readline, size)

    def _guarded(self, read: Any, size: int | None) -> bytes:
        if self.in_memory:
            return read(size)
        if not self.chunked_input and self.position >= (self.content_length or 0):
            return b""
        if self.broken:
            raise InvalidRequest("request body unreadable", headers=_CLOSE)
        if self.deadline <= time.monotonic():
            self.broken = True
            raise RequestTimeout(
                f"request body not received within {self.timeout:g} s", headers=_CLOSE
            )
        current = gevent.getcurrent()
        self.deadlines.enter(current, self.deadline)
        try:
            return read(size)
        except TimeoutError:  # the deadline passed (herd.router.http.deadlines)
            self.broken = True
            raise RequestTimeout(
                f"request body not received within {self.timeout:g} s", headers=_CLOSE
            ) from None
        except OSError:
            # Malformed chunk framing, or the client closed mid-body. Its
            # text (which can quote body bytes) is not passed on.
            self.broken = True
            what = (
                "malformed or incomplete chunked"
                if self.chunked_input
                else ("incomplete")
            )
            raise InvalidRequest(f"{what} request body", headers=_CLOSE) from None
        finally:
            self.deadlines.leave(current)

    def _discard(self) -> None:
        if self.broken or self._chunked_input_error:
            self.broken = True
            return
        if self.chunked_input:
            # Unread chunks (chunk_length is 0 only after the last chunk).
            self.broken = self.chunk_length != 0
            return
        left = (self.content_length or 0) - self.position
        if left <= 0:
            return
        if left > DISCARD_MAX or self.socket is not None:  # 100-continue unsent
            self.broken = True
            return
        try:
            super()._discard()
        except (HerdError, OSError):
            self.broken = True
