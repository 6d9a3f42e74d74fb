"""The fleet's live state, shared by every router worker: slots, queues,
rate-limit buckets, counters and the latest health poll.

With `herd serve --workers N` each gunicorn worker is its own process. The
manifest's limits are fleet-wide (a node with `max_concurrency: 2` serves two
requests, not two per worker), so the state they are checked against lives in
one memory-mapped file that the gunicorn master creates before it forks any
worker and every worker maps (herd.router.fleetfile: the layout and the
master's hooks). Without that file (the app built in-process, tests) the same
layout lives in anonymous memory and nothing is shared.

Why a mapped file with an flock, rather than the alternatives:

- A slot broker in the master over a Unix socket costs a round trip (two
  syscalls each way and a context switch to the master) on every acquire and
  every release, and the gunicorn master is not an event loop that could
  serve it: the broker would be one more process to supervise.
- `SO_REUSEPORT` with limits split between workers cannot honour
  `max_concurrency: 1` with two workers, nor a queue a busy worker shares
  with an idle one.
- A multiprocessing lock (a POSIX semaphore) stays held forever when its
  holder is killed with SIGKILL. An `flock` is released by the kernel when
  the process dies, so a killed worker can never wedge the others.

The lock is held only for a few reads and writes of memory, never across a
greenlet switch (no I/O happens under it), so blocking on it under gevent
blocks for microseconds at most. Only what must be decided atomically takes
it: taking a slot, joining a queue, spending a rate-limit token, claiming a
row, publishing a health poll. Releasing a slot, leaving a queue and counting
need no lock: every worker owns one *row* and writes only its own cells
(aligned 8-byte words), and readers add the rows up.

With one worker (`herd serve --workers 1`, the default) nothing else writes
the file, so no lock is taken at all (the file is marked SOLO by the master);
should gunicorn add a worker later (TTIN), the newcomer clears the mark as it
claims its row and every worker locks from then on.

A worker that dies holding slots: its row still counts until the master
(gunicorn's child_exit, `fleetfile.worker_gone()`) or the next worker to claim a row
(which checks that the recorded pid is gone) zeroes it. Counters of a gone
row are first added to the retired totals, so totals never go backwards.

The health poll is published here too (herd.router.fleethealth).

Cost (tests/bench/bench_fleetstate.py, CPU per request on the shared 2-core
test machine): about 5 µs for a group without a rate limit, 9 with one (an
flock pair each for the slot and the bucket, about 2 µs a pair; none with
one worker), against about 1 µs for plain per-process integers. A POSIX
semaphore would cost 0.2 µs but is never released by a killed holder.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os

from herd.router import fleetfile
from herd.router.fleetfile import (
    COUNTERS,
    FAILURES,
    GAUGES,
    GROUPS,
    GROUPS_USED,
    HI,
    KEY,
    LABELS_BYTES,
    MAGIC,
    NODES,
    NODES_USED,
    OFFSETS,
    REQUESTS,
    ROWS,
    SERIES,
    SERIES_USED,
    SIZE,
    SOLO,
    TRACES_DROPPED,
    TRACES_PENDING,
    TRACES_WRITTEN,
    UNRECORDED,
    WRITE_FAILURES,
    alive,
    key,
)
from herd.router.fleethealth import HealthCells

__all__ = [
    "FAILURES",
    "REQUESTS",
    "ROWS",
    "TRACES_DROPPED",
    "TRACES_PENDING",
    "TRACES_WRITTEN",
    "UNRECORDED",
    "WRITE_FAILURES",
    "FleetState",
]

log = logging.getLogger("herd.router")


class FleetState(HealthCells):
    """One process's view of the shared state (a worker's, or the master's)."""

    def __init__(self, path: str | None = None, *, claim: bool = True):
        self.path = path
        self.shared = path is not None
        if path is None:
            self._fd = -1
            self._map = mmap.mmap(-1, SIZE)
            self._map[:8] = MAGIC
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            self._map = mmap.mmap(self._fd, SIZE)
            if self._map[:8] != MAGIC:
                raise RuntimeError(f"{path} is not a herd fleet state file")
        buf = memoryview(self._map)
        o = OFFSETS

        def words(name: str, fmt: str, count: int) -> memoryview:
            return buf[o[name] : o[name] + 8 * count].cast(fmt)

        self._header = words("header", "q", 8)
        self._pids = words("pids", "q", ROWS)
        self._in_flight = words("in_flight", "q", NODES * ROWS)
        self._waiting = words("waiting", "q", NODES * ROWS)
        self._counters = words("counters", "q", COUNTERS * ROWS)
        self._retired = words("retired", "q", COUNTERS)
        self._served_at = words("served_at", "d", NODES)
        self._refused_at = words("refused_at", "d", NODES)
        self._buckets = words("buckets", "d", 4 * GROUPS)
        #: Counts per label combination and row (herd.router.observe.counts).
        self.series_cells = words("series", "q", SERIES * ROWS)
        self._series_retired = words("series_retired", "q", SERIES)
        self._buf = buf
        self._nodes: dict[str, int] = {}
        self._groups: dict[str, int] = {}
        self._series: dict[str, int] = {}
        self._poll_fd: int | None = None
        self.row = self._claim() if claim else -1

    @classmethod
    def attach(cls) -> FleetState:
        """The state the gunicorn master prepared before forking this worker
        (`prepare()`; a worker inherits the master's memory), else a private
        one (the app built in-process)."""
        path = fleetfile.path()
        if path is not None and os.path.exists(path):
            return cls(path)
        return cls(None)

    # -- the lock --------------------------------------------------------------

    def _lock(self) -> None:
        # No lock for a private state or a one-worker router's file (SOLO).
        if self._fd >= 0 and not self._header[SOLO]:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        # SOLO only ever goes from 1 to 0: a lock taken is always released
        # (at worst an unheld lock is released, which is harmless).
        if self._fd >= 0 and not self._header[SOLO]:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- rows ------------------------------------------------------------------

    def _claim(self) -> int:
        """This process's row: a free one, or one whose worker is gone."""
        me = os.getpid()
        self._lock()
        try:
            pids = self._pids
            if self._header[SOLO] and any(
                pid not in (0, me) and alive(pid) for pid in pids[: self._header[HI]]
            ):
                # A second worker after all (gunicorn's TTIN): lock from now on.
                self._header[SOLO] = 0
                log.warning("a second router worker joined: the fleet state locks")
            for row in range(ROWS):
                pid = pids[row]
                if pid == me or pid == 0 or not alive(pid):
                    if pid not in (0, me):
                        self._retire(row)
                    pids[row] = me
                    if row >= self._header[HI]:
                        self._header[HI] = row + 1
                    return row
        finally:
            self._unlock()
        raise RuntimeError(f"more than {ROWS} router workers share one fleet state")

    def _retire(self, row: int) -> None:
        """Zero a gone worker's row (under the lock): its slots and places in
        queues are free again, its counts move to the retired totals."""
        for i in range(self._header[NODES_USED]):
            self._in_flight[i * ROWS + row] = 0
            self._waiting[i * ROWS + row] = 0
        for c in range(COUNTERS):
            cell = c * ROWS + row
            if c not in GAUGES:
                self._retired[c] += self._counters[cell]
            self._counters[cell] = 0
        for i in range(self._header[SERIES_USED]):
            self._series_retired[i] += self.series_cells[i * ROWS + row]
            self.series_cells[i * ROWS + row] = 0
        self._pids[row] = 0

    @property
    def rows(self) -> int:
        """Rows ever in use at once (1: this worker has always been alone)."""
        return self._header[HI]

    def release_worker(self, pid: int) -> bool:
        """A worker exited (the master's child_exit): free its row."""
        self._lock()
        try:
            for row in range(self._header[HI]):
                if self._pids[row] == pid:
                    self._retire(row)
                    return True
        finally:
            self._unlock()
        return False

    # -- names -----------------------------------------------------------------

    def _index(
        self,
        name: str,
        cache: dict[str, int],
        region: str,
        used: int,
        limit: int,
        label: str | None = None,
    ) -> int:
        found = cache.get(name)
        if found is not None:
            return found
        digest = key(name)
        start = OFFSETS[region]
        self._lock()
        try:
            count = self._header[used]
            keys = self._buf[start : start + KEY * count].tobytes()
            at = keys.find(digest)
            while at >= 0 and at % KEY:
                at = keys.find(digest, at + 1)
            if at >= 0:
                index = at // KEY
            else:
                if count >= limit:
                    raise RuntimeError(f"more than {limit} names in the fleet state")
                index = count
                if label is not None:  # written before any worker can find it
                    at = OFFSETS[label] + LABELS_BYTES * index
                    data = name.encode()
                    self._buf[at : at + len(data)] = data
                self._buf[start + KEY * index : start + KEY * (index + 1)] = digest
                self._header[used] = count + 1
        finally:
            self._unlock()
        cache[name] = index
        return index

    def node(self, name: str) -> int:
        """The index of node `name` (the same in every worker)."""
        return self._index(name, self._nodes, "node_keys", NODES_USED, NODES)

    def group(self, name: str) -> int:
        return self._index(name, self._groups, "group_keys", GROUPS_USED, GROUPS)

    def series(self, labels: str) -> int:
        """The index of a label combination (text of at most LABELS_BYTES
        bytes in UTF-8); its counts are `series_cells[index * ROWS + row]`."""
        if len(labels.encode()) > LABELS_BYTES:
            raise ValueError("label values too long to count")
        return self._index(
            labels, self._series, "series_keys", SERIES_USED, SERIES, "series_labels"
        )

    def series_totals(self) -> list[tuple[str, int]]:
        """(labels, every worker's count, gone ones' included) of each series."""
        out, hi, cells = [], self._header[HI], self.series_cells
        start = OFFSETS["series_labels"]
        for i in range(self._header[SERIES_USED]):
            raw = self._buf[start + LABELS_BYTES * i : start + LABELS_BYTES * (i + 1)]
            labels = raw.tobytes().rstrip(b"\0").decode()
            total = sum(cells[i * ROWS : i * ROWS + hi]) + self._series_retired[i]
            out.append((labels, total))
        return out

    # -- slots and queues ------------------------------------------------------

    def in_flight(self, node: int) -> int:
        return _total(self._in_flight, node * ROWS, self._header[HI])

    def waiting(self, node: int) -> int:
        return _total(self._waiting, node * ROWS, self._header[HI])

    def load(self, node: int) -> tuple[int, int]:
        """(in flight, waiting) on a node now, in every worker."""
        base, hi = node * ROWS, self._header[HI]
        if hi == 1:  # one worker: its own cells (see _total)
            return self._in_flight[base], self._waiting[base]
        return _total(self._in_flight, base, hi), _total(self._waiting, base, hi)

    def take(self, node: int, limit: int, queued: bool) -> bool:
        """Take a slot if fewer than `limit` are taken fleet-wide. A newcomer
        (`queued` False) never overtakes a request already waiting."""
        base = node * ROWS
        self._lock()
        try:
            hi = self._header[HI]
            cells = self._in_flight
            if (cells[base] if hi == 1 else sum(cells[base : base + hi])) >= limit:
                return False
            if not queued and (
                self._waiting[base] if hi == 1 else any(self._waiting[base : base + hi])
            ):
                return False
            cells[base + self.row] += 1
            return True
        finally:
            self._unlock()

    def give(self, node: int) -> None:
        """Release a slot this worker took."""
        self._in_flight[node * ROWS + self.row] -= 1

    def join(self, node: int, depth: int) -> bool:
        """Take a place in the node's queue unless `depth` are taken."""
        base = node * ROWS
        self._lock()
        try:
            if _total(self._waiting, base, self._header[HI]) >= depth:
                return False
            self._waiting[base + self.row] += 1
            return True
        finally:
            self._unlock()

    def leave(self, node: int) -> None:
        self._waiting[node * ROWS + self.row] -= 1

    def adjust(self, node: int, in_flight: int = 0, waiting: int = 0) -> None:
        """Add to this worker's counts of a node (tests and tools)."""
        self._in_flight[node * ROWS + self.row] += in_flight
        self._waiting[node * ROWS + self.row] += waiting

    # -- rate-limit buckets ----------------------------------------------------

    def spend(
        self, group: str, now: float, per_minute: float, burst: float
    ) -> float | None:
        """Spend one token of `group`'s bucket: None when spent, else the
        tokens left (under one). A changed rate starts a full bucket."""
        at = 4 * self.group(group)
        b = self._buckets
        per_second = per_minute / 60.0
        self._lock()
        try:
            if b[at + 2] != per_minute or b[at + 3] != burst:
                b[at], b[at + 1], b[at + 2], b[at + 3] = burst, now, per_minute, burst
            tokens = min(burst, b[at] + max(0.0, now - b[at + 1]) * per_second)
            b[at + 1] = max(now, b[at + 1])
            if tokens >= 1.0:
                b[at] = tokens - 1.0
                return None
            b[at] = tokens
            return tokens
        finally:
            self._unlock()

    # -- counters --------------------------------------------------------------

    def bump(self, counter: int, amount: int = 1) -> None:
        self._counters[counter * ROWS + self.row] += amount

    def set(self, counter: int, value: int) -> None:
        """This worker's own total of `counter` (it keeps counting itself)."""
        self._counters[counter * ROWS + self.row] = value

    def total(self, counter: int) -> int:
        base = counter * ROWS
        live = sum(self._counters[base : base + self._header[HI]])
        return live + self._retired[counter]


def _total(cells: memoryview, base: int, hi: int) -> int:
    """The sum of a node's cells over the rows in use. One row (a one-worker
    router, the default) is read directly: slicing a memoryview makes a new
    view, a cost on every slot taken and every candidate scored."""
    if hi == 1:
        return cells[base]
    return sum(cells[base : base + hi])
