"""A value computed off the event loop and kept for a few seconds.

The dashboard's aggregates read SQLite files (traces.db, herd.db). Each is
computed in a thread of gevent's pool, so a slow query over a big database
holds up only the dashboard requests waiting for it, never the event loop;
callers arriving while it runs wait for that same computation instead of
starting another, and the result is reused for `ttl_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Cached(Generic[T]):
    """`get()` returns `compute()`'s result, recomputed at most every `ttl_s`."""

    def __init__(
        self,
        compute: Callable[[], T],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        in_thread: bool = True,
    ):
        self.compute = compute
        self.ttl_s = ttl_s
        self.clock = clock
        self.in_thread = in_thread
        self._value: tuple[float, T] | None = None
        self._lock: Any = None
        #: How many times `compute` ran (tests check the cache holds).
        self.computed = 0

    def _fresh(self) -> tuple[float, T] | None:
        """(computed at, value) while within the TTL (the value may be None:
        "nothing to read" is an answer to keep too)."""
        if self._value is not None and self.clock() - self._value[0] < self.ttl_s:
            return self._value
        return None

    def get(self) -> T:
        fresh = self._fresh()
        if fresh is not None:
            return fresh[1]
        if self._lock is None:
            from gevent.lock import BoundedSemaphore

            self._lock = BoundedSemaphore()
        with self._lock:
            fresh = self._fresh()  # computed while this caller waited
            if fresh is not None:
                return fresh[1]
            started = self.clock()
            if self.in_thread:
                import gevent

                value = gevent.get_hub().threadpool.apply(self.compute)
            else:
                value = self.compute()
            self.computed += 1
            self._value = (started, value)
            return value
