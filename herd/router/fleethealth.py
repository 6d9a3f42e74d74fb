"""Node health in the fleet state (herd.router.fleetstate): the latest poll,
published by the one worker that polls, and each node's passive marks.

Exactly one worker (whoever holds `poller.lock`, an flock the kernel releases
when that worker dies, so another takes over within a poll interval) polls
the nodes and publishes the result here; the others adopt it
(herd.discovery.static). Any worker notes when a node last answered well or
refused a connection (passive health): one aligned word per node, no lock.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from herd.router.fleetfile import HEALTH_BYTES, HEALTH_GEN, HEALTH_LEN, OFFSETS


class HealthCells:
    """FleetState's health methods (mixed into it: the same mapped file)."""

    shared: bool
    path: str | None
    _poll_fd: int | None
    _buf: Any
    _header: Any
    _served_at: Any
    _refused_at: Any
    _nodes: dict[str, int]

    def _lock(self) -> None: ...

    def _unlock(self) -> None: ...

    def node(self, name: str) -> int: ...

    def lead_polls(self) -> bool:
        """Whether this worker is (or now becomes) the one that polls nodes."""
        if not self.shared:
            return True
        if self._poll_fd is None:
            lock = os.path.join(os.path.dirname(self.path or ""), "poller.lock")
            self._poll_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._poll_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def publish(self, data: bytes) -> bool:
        """The latest poll of every node, for the other workers."""
        if len(data) > HEALTH_BYTES:
            return False
        start = OFFSETS["health"]
        self._lock()
        try:
            self._buf[start : start + len(data)] = data
            self._header[HEALTH_LEN] = len(data)
            self._header[HEALTH_GEN] += 1
        finally:
            self._unlock()
        return True

    def published(self, seen: int) -> tuple[int, bytes] | None:
        """(generation, data) of the latest poll if newer than `seen`."""
        if self._header[HEALTH_GEN] == seen:
            return None
        start = OFFSETS["health"]
        self._lock()
        try:
            gen = self._header[HEALTH_GEN]
            data = self._buf[start : start + self._header[HEALTH_LEN]].tobytes()
        finally:
            self._unlock()
        return gen, data

    def served(self, node: str, when: float) -> None:
        """A worker got a good answer from `node` (passive health)."""
        # (The index looked up inline: this runs for every request served.)
        index = self._nodes.get(node)
        self._served_at[self.node(node) if index is None else index] = when

    def served_at(self, node: str) -> float | None:
        return self._served_at[self.node(node)] or None

    def refused(self, node: str, when: float) -> None:
        """A worker could not connect to `node` at all."""
        self._refused_at[self.node(node)] = when

    def refused_at(self, node: str) -> float:
        return self._refused_at[self.node(node)]
