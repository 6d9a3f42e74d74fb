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

Refused requests (a bad Host, a denied client, a malformed head) are logged
within the router's refusal budget (herd.router.runtime.RefusalBudget: a
burst, then a steady rate); those over it are only counted here, and one
line every SUMMARY_S says how many were left out, so a flood of refusals
cannot flood the log and still shows in it. Served requests are always
logged.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO

from herd.router.observe.traces import Trace

FLUSH_S = 0.25
#: Lines kept before a write is forced (bounds memory under bursts).
BUFFER_MAX = 5000
#: Seconds between the lines counting refusals left out of the log.
SUMMARY_S = 10.0


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
        #: Refused requests not logged since the last summary line.
        self._unlogged = 0

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
            self._write(self._take())

    def unlogged(self) -> None:
        """Count one refused request left out of the log (over the budget)."""
        self._unlogged += 1

    def _summarize(self) -> None:
        """Queue the line counting the refusals left out, if there were any."""
        count = self._unlogged
        if count:
            self._unlogged = 0
            self._lines.append(
                f"{self._now()} herd.access refusals-not-logged {count} "
                "(over the refusal log budget; herd_refusals_unrecorded_total)\n"
            )

    def flush(self) -> None:
        """Write the queued lines (and the count of refusals left out) now,
        on the calling thread."""
        self._summarize()
        self._write(self._take())

    def _take(self) -> str:
        lines, self._lines = self._lines, []
        return "".join(lines)

    def _write(self, text: str) -> None:
        if not text:
            return
        stream = self._stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not break request handling

    def _write_fd(self, text: str) -> None:
        """`_write` from the writer thread: straight to the stream's file
        descriptor when it has one (a text stream is not safe to share with
        the event loop's own logging; whole lines go out in each write)."""
        stream = self._stream or sys.stderr
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        if fd < 0:
            self._write(text)
            return
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            pass  # as in _write

    def run(self, stopped: Callable[[], bool]) -> None:
        """Flush every FLUSH_S until `stopped()` (a background greenlet).

        The lines are taken on the event loop, but written by a native thread
        of its own (a one-thread gevent ThreadPool): stderr is a pipe to
        journald or a terminal, and when its reader falls behind, a write
        blocks. On the event loop every request would wait for it; on the
        thread only the next flush does (lines keep queueing, bounded by
        BUFFER_MAX).
        """
        import gevent
        from gevent.threadpool import ThreadPool

        pool = ThreadPool(1)
        summarized = time.monotonic()
        try:
            while not stopped():
                gevent.sleep(FLUSH_S)
                if self._unlogged and time.monotonic() - summarized >= SUMMARY_S:
                    self._summarize()
                    summarized = time.monotonic()
                text = self._take()
                if text:
                    pool.apply(self._write_fd, (text,))
        finally:
            pool.kill()
        self.flush()
