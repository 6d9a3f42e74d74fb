"""A byte progress bar for long copies: bytes, rate and ETA, on a TTY only."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Redraws one status line at most every `interval` seconds; silent if off."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.2,
    ):
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self.started = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._drawn >= self.interval:
                self._drawn = now
                self._draw(now)

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{pct:5.1f}%  {human_bytes(self.done)} / {human_bytes(self.total)}  "
            f"{human_bytes(rate)}/s  ETA {int(left) // 60}:{int(left) % 60:02d}"
        )

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line(now).ljust(70))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.total:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
