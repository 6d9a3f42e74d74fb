"""One log line per request (never prompt or response text), written in batches.

Python's `logging` costs tens of microseconds per record (a LogRecord, time
formatting, a lock, one write and flush each): more than the router's own work
per request. Lines are built with one f-string, kept in memory, and written
with a single `write` every FLUSH_S by a background greenlet (and at exit).
The timestamp string is rebuilt once per second.

Every field is one space-free token escaped and bounded by
herd.router.logfield, so no caller-chosen text (a model name with a line
break, a NUL, a 900 kB name) can forge a line or grow one without bound.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

from herd.router.logfield import logged

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

    def request(self, outcome: Any, duration_ms: float) -> None:
        """Queue the line of one finished request."""
        error = f" error={logged(outcome.error_class)}" if outcome.error_class else ""
        model = outcome.served_model or outcome.requested_model
        self._lines.append(
            f"{self._now()} herd.access {logged(outcome.peer or '-')} "
            f"{logged(outcome.client or '-')} {logged(outcome.method, 16)} "
            f"{logged(outcome.route)} {outcome.status} "
            f"model={logged(model) if model else '-'} "
            f"node={logged(outcome.node or '-')} retries={outcome.retries} "
            f"{duration_ms:.1f}ms{error}\n"
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
