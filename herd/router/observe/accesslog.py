"""One log line per request (never prompt or response text), written in batches.

Python's `logging` costs tens of microseconds per record (a LogRecord, time
formatting, a lock, one write and flush each): more than the router's own work
per request. Lines are built with one f-string, kept in memory, and written
with a single `write` every FLUSH_S by a background greenlet (and at exit).
The timestamp string is rebuilt once per second.

A line is made from the request's trace row, whose text fields are
escaped and bounded by herd.router.observe.logfield: each field is one space-free
token, so no caller-chosen text (a model name with a line break, a NUL, a
900 kB name) can forge a line or grow one without bound.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

from herd.router.observe.traces import Trace

FLUSH_S = 0.25
#: Lines kept before a write is forced (bounds memory under bursts).
BUFFER_MAX = 5000


class AccessLog:
    """Buffered access lines to `stream` (stderr by default: journald, gunicorn)."""

    def __init__(
        self, stream: IO[str] | None = None, clock: Callable[[], float] = time.time
    ):
        self._stream = stream
        self._clock = clock
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""

    def _now(self) -> str:
        second = int(self._clock())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._stamp

    def request(self, trace: Trace) -> None:
        """Queue the line of one finished request, from its trace row (whose
        text fields herd.router.observe.logfield has already escaped and bounded)."""
        error = f" error={trace.error_class}" if trace.error_class else ""
        self._lines.append(
            f"{self._now()} herd.access {trace.peer or '-'} {trace.client or '-'} "
            f"{trace.method} {trace.route} {trace.status} "
            f"model={trace.served_model or trace.requested_model or '-'} "
            f"node={trace.node or '-'} retries={trace.retries} "
            f"{trace.duration_ms:.1f}ms{error}\n"
        )
        if len(self._lines) >= BUFFER_MAX:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        text, self._lines = "".join(self._lines), []
        stream = self._stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not break request handling

    def run(self, stopped: Callable[[], bool]) -> None:
        """Flush every FLUSH_S until `stopped()` (a background greenlet)."""
        import gevent

        while not stopped():
            gevent.sleep(FLUSH_S)
            self.flush()
        self.flush()
