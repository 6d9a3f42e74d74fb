"""Histogram observations and counter increments kept in memory and added to
their prometheus_client children in bulk (herd.router.observe.metrics flushes
them every SAMPLE_S, at a scrape and at exit): writing each observation to
the multiprocess files would cost more than the rest of a request's counting.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any


class Batched:
    """Observations of one histogram child kept in memory, added to it by
    `flush` (bucket counts and sum in one write each, not per request)."""

    __slots__ = ("child", "bounds", "counts", "sum", "dirty")

    def __init__(self, child: Any, bounds: tuple[float, ...]):
        self.child = child
        self.bounds = (*bounds, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.dirty = False

    def observe(self, value: float, dirty: list[Any]) -> None:
        # The first bucket whose upper bound is >= value (Prometheus' `le`).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        if not self.dirty:
            self.dirty = True
            dirty.append(self)

    def flush(self) -> None:
        # prometheus_client has no bulk observe: add to the child's bucket and
        # sum values directly (what Histogram.observe does one at a time).
        buckets = self.child._buckets
        for i, count in enumerate(self.counts):
            if count:
                buckets[i].inc(count)
                self.counts[i] = 0
        self.child._sum.inc(self.sum)
        self.sum = 0.0
        self.dirty = False


class BatchedCount:
    """Increments of one counter child kept in memory until `flush`."""

    __slots__ = ("child", "total", "dirty")

    def __init__(self, child: Any):
        self.child = child
        self.total = 0
        self.dirty = False

    def inc(self, amount: int, dirty: list[Any]) -> None:
        self.total += amount
        if not self.dirty:
            self.dirty = True
            dirty.append(self)

    def flush(self) -> None:
        self.child.inc(self.total)
        self.total = 0
        self.dirty = False
