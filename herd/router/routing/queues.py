"""Per-node bounded concurrency with a bounded wait queue.

Each node has `max_concurrency` slots. A request takes a free slot at once, or
waits (at most `depth` waiters per node, at most `queue_timeout_s`); a full
queue is refused immediately, never piled up. Built on `threading` primitives,
which gevent's monkey-patching makes cooperative inside the gunicorn worker.
The fast paths (a free slot, a release with nobody waiting) take no lock:
within one gevent worker nothing can run between a check and an update.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from herd.errors import QueueFull


class Slots:
    """The slots of one node. `acquire` / `release` must pair up."""

    def __init__(self, limit: int, depth: int):
        self.limit = max(int(limit), 1)
        self.depth = max(int(depth), 0)
        self.in_flight = 0
        self.waiting = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def configure(self, limit: int, depth: int) -> None:
        """Apply new limits from a reloaded manifest (in-flight work is kept)."""
        with self._cond:
            self.limit = max(int(limit), 1)
            self.depth = max(int(depth), 0)
            self._cond.notify_all()

    def try_acquire(self) -> bool:
        # No lock: greenlets only switch on I/O, so nothing runs between the
        # check and the increment (the router is one thread per worker).
        if self.in_flight < self.limit and not self.waiting:
            self.in_flight += 1
            return True
        return False

    def wait_acquire(self, timeout: float, clock: Callable[[], float]) -> bool:
        """Queue for a slot; False when the queue is full or `timeout` passed."""
        deadline = clock() + timeout
        with self._cond:
            if self.in_flight < self.limit:
                self.in_flight += 1
                return True
            if self.waiting >= self.depth:
                return False
            self.waiting += 1
            try:
                while self.in_flight >= self.limit:
                    left = deadline - clock()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                self.in_flight += 1
                return True
            finally:
                self.waiting -= 1

    def release(self) -> None:
        self.in_flight -= 1
        if self.waiting:
            with self._cond:
                self._cond.notify()

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit and self.waiting >= self.depth


class Queues:
    """The slots of every node, keyed by node name, kept across reloads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._slots: dict[str, Slots] = {}
        self._clock = clock

    def configure(self, nodes: Iterable[tuple[str, int]], depth: int) -> None:
        for name, limit in nodes:
            slots = self._slots.get(name)
            if slots is None:
                self._slots[name] = Slots(limit, depth)
            elif slots.limit != limit or slots.depth != depth:
                slots.configure(limit, depth)

    def slots(self, name: str) -> Slots:
        slots = self._slots.get(name)
        if slots is None:
            slots = self._slots[name] = Slots(1, 0)
        return slots

    def in_flight(self, name: str) -> int:
        slots = self._slots.get(name)
        return slots.in_flight if slots else 0

    def waiting(self, name: str) -> int:
        slots = self._slots.get(name)
        return slots.waiting if slots else 0

    def acquire(self, ranked: tuple[str, ...], timeout: float) -> tuple[str, float]:
        """A slot on the best node that has one; returns (node, ms waited).

        Free slots first, in rank order; otherwise queue on the best node
        whose queue has room. Raises QueueFull when every queue is full or
        the wait timed out.
        """
        for name in ranked:
            if self.slots(name).try_acquire():
                return name, 0.0
        start = self._clock()
        for name in ranked:
            slots = self.slots(name)
            if slots.waiting >= slots.depth:
                continue
            if slots.wait_acquire(timeout, self._clock):
                return name, (self._clock() - start) * 1000.0
            raise QueueFull(
                f"no free node slot for this model after waiting {timeout:g}s",
                headers={"Retry-After": str(max(1, int(timeout)))},
                detail=f"no free slot on {name} after waiting {timeout:g}s",
            )
        raise QueueFull(
            "server busy, please try again: every node for this model is at "
            "capacity and its wait queue is full",
            headers={"Retry-After": "1"},
        )

    def release(self, name: str) -> None:
        self.slots(name).release()
