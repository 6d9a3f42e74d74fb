"""Deadlines for the router worker's blocking reads, kept by one sweeping greenlet.

A client connection waits for its next request (keep-alive), and a request
waits for its body; both must end by a deadline. A gevent timer per wait (or a
socket timeout, which starts one per blocking call) costs more CPU per request
than parsing the request head. Instead, a waiting greenlet enters itself here
with its deadline (two dict operations), and one greenlet per worker sweeps
every SWEEP_S and throws `TimeoutError` into each greenlet still waiting past
its deadline: at the read it is blocked in, where it surfaces as a socket
timeout.

A sweep expires only the deadlines that had already passed at the sweep
before it. When the worker itself was not running (SIGSTOP, a VM pause, a
long stall), its first sweep after waking may run before the event loop has
looked at its sockets once (a stopped process's epoll_wait returns EINTR, with
no events): a client whose next request, or a node whose next chunk, arrived
in time would be cut off for time the worker slept through. Between two
sweeps the loop has polled every socket at least once, so a greenlet still
waiting then really had nothing to read by its deadline. Deadlines are thus
kept to within two sweeps (2 * SWEEP_S).

`drop_idle` (a stopping worker) throws into every waiter entered as
`droppable` (connections between requests) at once.
"""

from __future__ import annotations

import time
from typing import Any

import gevent

#: How often the sweeper looks (the granularity of every deadline).
SWEEP_S = 0.25


class Deadlines:
    """Greenlets blocked in a read, each with the monotonic time it must end by."""

    def __init__(self) -> None:
        #: greenlet -> (deadline, droppable)
        self.waiting: dict[Any, tuple[float, bool]] = {}
        self.closing = False
        self._sweeper: Any = None
        #: What a sweep may expire: deadlines up to the previous sweep's time.
        self._cutoff = float("-inf")

    def enter(self, greenlet: Any, deadline: float, droppable: bool = False) -> None:
        """`greenlet` is about to block until at most `deadline`."""
        if self._sweeper is None:
            self._sweeper = gevent.spawn(self._sweep)
        self.waiting[greenlet] = (deadline, droppable)

    def leave(self, greenlet: Any) -> None:
        self.waiting.pop(greenlet, None)

    def drop_idle(self) -> None:
        """From now on, end every droppable wait (at once, and new ones too)."""
        self.closing = True
        self._expire_due()

    def _sweep(self) -> None:
        while True:
            gevent.sleep(SWEEP_S)
            now = time.monotonic()
            self._expire_due()
            self._cutoff = now

    def _due(self, entry: tuple[float, bool]) -> bool:
        deadline, droppable = entry
        return deadline <= self._cutoff or (droppable and self.closing)

    def _expire_due(self) -> None:
        # Every waiting connection is looked at on every sweep (hundreds of
        # idle agents' keep-alive connections): one comprehension, no Python
        # call per entry; a due entry is checked again by `_expire`.
        # (The rule is `_due`'s, spelled inline.)
        cutoff, closing = self._cutoff, self.closing
        due = [
            g
            for g, (deadline, droppable) in self.waiting.items()
            if deadline <= cutoff or (droppable and closing)
        ]
        if due:
            run_callback = gevent.get_hub().loop.run_callback
            for greenlet in due:
                run_callback(self._expire, greenlet)

    def _expire(self, greenlet: Any) -> None:
        # Runs in the hub: a greenlet still entered is blocked in the read it
        # entered for, so the exception lands there and nowhere else.
        entry = self.waiting.get(greenlet)
        if entry is not None and self._due(entry):
            del self.waiting[greenlet]
            greenlet.throw(TimeoutError("deadline passed"))
