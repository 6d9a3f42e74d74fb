"""Per-node bounded concurrency with a bounded wait queue, fleet-wide.

Each node has `max_concurrency` slots. A request takes a free slot at once, or
waits (at most `depth` waiters per node, at most `queue_timeout_s`); a full
queue is refused immediately, never piled up. The counts live in the shared
fleet state (herd.router.fleetstate), so the limits hold across every
gunicorn worker, not per worker. The limits themselves come from each
worker's copy of the manifest and change with it.

A waiter is woken at once by a release in its own worker (a gevent-aware
condition) and otherwise looks again every few milliseconds (another
worker's release), backing off to POLL_MAX_S: no lock is ever held while it
waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from herd.errors import QueueFull
from herd.router.fleetstate import FleetState

#: How often a waiter looks for a slot another worker freed (first, longest).
POLL_S = 0.002
POLL_MAX_S = 0.05


def _count(which: int, name: str) -> property:
    """One of a node's fleet-wide counts (`Slots.load()`); setting it (tests
    and tools) makes this worker's share whatever gives that total."""

    def get(slots: Slots) -> int:
        return slots.load()[which]

    def put(slots: Slots, total: int) -> None:
        slots._state.adjust(slots._index, **{name: total - get(slots)})

    return property(get, put)


class Slots:
    """The slots of one node. `acquire` / `release` must pair up."""

    def __init__(
        self,
        limit: int,
        depth: int,
        state: FleetState | None = None,
        index: int | None = None,
    ):
        self.limit = max(int(limit), 1)
        self.depth = max(int(depth), 0)
        self._state = state if state is not None else FleetState()
        self._index = index if index is not None else self._state.node("")
        #: Waiters in this worker (woken at once by a release here).
        self._local_waiters = 0
        self._cond = threading.Condition(threading.Lock())

    def configure(self, limit: int, depth: int) -> None:
        """Apply new limits from a reloaded manifest (in-flight work is kept)."""
        self.limit = max(int(limit), 1)
        self.depth = max(int(depth), 0)
        if self._local_waiters:
            with self._cond:
                self._cond.notify_all()

    #: Requests on this node now, and queued for it, in every worker.
    in_flight = _count(0, "in_flight")
    waiting = _count(1, "waiting")

    def load(self) -> tuple[int, int]:
        """(in flight, waiting) now, in every worker."""
        return self._state.load(self._index)

    def try_acquire(self) -> bool:
        return self._state.take(self._index, self.limit, queued=False)

    def wait_acquire(self, timeout: float, clock: Callable[[], float]) -> bool:
        """Queue for a slot; False when the queue is full or `timeout` passed."""
        state, index = self._state, self._index
        if state.take(index, self.limit, queued=True):
            return True
        deadline = clock() + timeout
        if not state.join(index, self.depth):
            return False
        self._local_waiters += 1
        poll = POLL_S
        try:
            while not state.take(index, self.limit, queued=True):
                left = deadline - clock()
                if left <= 0:
                    return False
                with self._cond:
                    self._cond.wait(min(left, poll))
                poll = min(poll * 2, POLL_MAX_S)
            return True
        finally:
            self._local_waiters -= 1
            state.leave(index)

    def release(self) -> None:
        self._state.give(self._index)
        if self._local_waiters:
            with self._cond:
                self._cond.notify()

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit and self.waiting >= self.depth


class Queues:
    """The slots of every node, keyed by node name, kept across reloads."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        state: FleetState | None = None,
    ):
        self._slots: dict[str, Slots] = {}
        self._clock = clock
        self._state = state if state is not None else FleetState()

    def configure(self, nodes: Iterable[tuple[str, int]], depth: int) -> None:
        for name, limit in nodes:
            slots = self._slots.get(name)
            if slots is None:
                self._slots[name] = self._new(name, limit, depth)
            elif slots.limit != limit or slots.depth != depth:
                slots.configure(limit, depth)

    def _new(self, name: str, limit: int, depth: int) -> Slots:
        return Slots(limit, depth, self._state, self._state.node(name))

    def slots(self, name: str) -> Slots:
        slots = self._slots.get(name)
        if slots is None:
            slots = self._slots[name] = self._new(name, 1, 0)
        return slots

    def in_flight(self, name: str) -> int:
        slots = self._slots.get(name)
        return slots.in_flight if slots else 0

    def waiting(self, name: str) -> int:
        slots = self._slots.get(name)
        return slots.waiting if slots else 0

    def load(self, name: str) -> tuple[int, int]:
        """(in flight, waiting) on a node now, in every worker."""
        slots = self._slots.get(name)
        return slots.load() if slots else (0, 0)

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
