"""The fleet's live state, shared by every router worker: slots, queues,
rate-limit buckets, counters and the latest health poll.

With `herd serve --workers N` each gunicorn worker is its own process. The
manifest's limits are fleet-wide (a node with `max_concurrency: 2` serves two
requests, not two per worker), so the state they are checked against lives in
one memory-mapped file that the gunicorn master creates before it forks any
worker (`prepare()`, gunicorn's on_starting) and every worker maps
(`FleetState.attach()`: the path is inherited across the fork). Without that
file (the app built in-process, tests) the same layout lives in anonymous
memory and nothing is shared.

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

A worker that dies holding slots: its row still counts until the master
(gunicorn's child_exit, `worker_gone()`) or the next worker to claim a row
(which checks that the recorded pid is gone) zeroes it. Counters of a gone
row are first added to the retired totals, so totals never go backwards.

The health poll: exactly one worker (whoever holds `poller.lock`, an flock
the kernel releases when that worker dies, so another takes over within a
poll interval) polls the nodes and publishes the result here; the others
adopt it (`herd.discovery.static`).

Cost (tests/bench/bench_fleetstate.py, CPU per request on the shared 2-core
test machine): 4-6 µs for a group without a rate limit (one flock pair to
take the slot), 10-12 µs with one (a second pair for the bucket), the same
with three processes contending, against about 1 µs for the per-process
integers used before. A pair of flock calls is about 2 µs; a POSIX semaphore
would be 0.2 µs but is never released by a killed holder. The router spends
several hundred µs of CPU per request, so this is about 1 %, below the noise
of tests/bench/bench_router.py on that machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("herd.router")

MAGIC = b"HERDFS01"
#: Worker rows (at most this many workers at once; rows of gone workers are reused).
ROWS = 128
#: Distinct node names and client groups the file can hold.
NODES = 4096
GROUPS = 1024
#: Bytes for the published health poll (sparse: only what is written is used).
HEALTH_BYTES = 16 * 1024 * 1024

#: Counters (per row; a gone row's values are kept in the retired totals).
REQUESTS, FAILURES, TRACES_WRITTEN, TRACES_DROPPED, WRITE_FAILURES, UNRECORDED = range(
    6
)
#: Gauges (per row; a gone row's values are dropped).
TRACES_PENDING = 6
COUNTERS = 8
_GAUGES = (TRACES_PENDING,)

# Header words: highest row in use + 1, nodes and groups known, health
# generation and length.
_HI, _NODES_USED, _GROUPS_USED, _HEALTH_GEN, _HEALTH_LEN = range(5)
_KEY = 16  # bytes of a name's digest


def _layout() -> tuple[dict[str, int], int]:
    """Byte offsets of every region (8-byte aligned) and the total size."""
    sizes = {
        "magic": 8,
        "header": 8 * 8,
        "pids": 8 * ROWS,
        "node_keys": _KEY * NODES,
        "group_keys": _KEY * GROUPS,
        "in_flight": 8 * NODES * ROWS,
        "waiting": 8 * NODES * ROWS,
        "counters": 8 * COUNTERS * ROWS,
        "retired": 8 * COUNTERS,
        "served_at": 8 * NODES,
        "refused_at": 8 * NODES,
        "buckets": 8 * 4 * GROUPS,
        "health": HEALTH_BYTES,
    }
    offsets, at = {}, 0
    for name, size in sizes.items():
        offsets[name] = at
        at += (size + 7) // 8 * 8
    return offsets, at


OFFSETS, SIZE = _layout()


def _key(name: str) -> bytes:
    return hashlib.blake2b(name.encode("utf-8"), digest_size=_KEY).digest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FleetState:
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
        self._buf = buf
        self._nodes: dict[str, int] = {}
        self._groups: dict[str, int] = {}
        self._poll_fd: int | None = None
        self.row = self._claim() if claim else -1

    @classmethod
    def attach(cls) -> FleetState:
        """The state the gunicorn master prepared before forking this worker
        (`prepare()`; a worker inherits the master's memory), else a private
        one (the app built in-process)."""
        if _path is not None and os.path.exists(_path):
            return cls(_path)
        return cls(None)

    # -- the lock --------------------------------------------------------------

    def _lock(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- rows ------------------------------------------------------------------

    def _claim(self) -> int:
        """This process's row: a free one, or one whose worker is gone."""
        me = os.getpid()
        self._lock()
        try:
            pids = self._pids
            for row in range(ROWS):
                pid = pids[row]
                if pid == me or pid == 0 or not _alive(pid):
                    if pid not in (0, me):
                        self._retire(row)
                    pids[row] = me
                    if row >= self._header[_HI]:
                        self._header[_HI] = row + 1
                    return row
        finally:
            self._unlock()
        raise RuntimeError(f"more than {ROWS} router workers share one fleet state")

    def _retire(self, row: int) -> None:
        """Zero a gone worker's row (under the lock): its slots and places in
        queues are free again, its counts move to the retired totals."""
        for i in range(self._header[_NODES_USED]):
            self._in_flight[i * ROWS + row] = 0
            self._waiting[i * ROWS + row] = 0
        for c in range(COUNTERS):
            cell = c * ROWS + row
            if c not in _GAUGES:
                self._retired[c] += self._counters[cell]
            self._counters[cell] = 0
        self._pids[row] = 0

    @property
    def rows(self) -> int:
        """Rows ever in use at once (1: this worker has always been alone)."""
        return self._header[_HI]

    def release_worker(self, pid: int) -> bool:
        """A worker exited (the master's child_exit): free its row."""
        self._lock()
        try:
            for row in range(self._header[_HI]):
                if self._pids[row] == pid:
                    self._retire(row)
                    return True
        finally:
            self._unlock()
        return False

    # -- names -----------------------------------------------------------------

    def _index(self, name: str, cache: dict[str, int], region: str, used: int) -> int:
        found = cache.get(name)
        if found is not None:
            return found
        key = _key(name)
        start = OFFSETS[region]
        limit = NODES if region == "node_keys" else GROUPS
        self._lock()
        try:
            count = self._header[used]
            keys = self._buf[start : start + _KEY * count].tobytes()
            at = keys.find(key)
            while at >= 0 and at % _KEY:
                at = keys.find(key, at + 1)
            if at >= 0:
                index = at // _KEY
            else:
                if count >= limit:
                    raise RuntimeError(f"more than {limit} names in the fleet state")
                index = count
                self._buf[start + _KEY * index : start + _KEY * (index + 1)] = key
                self._header[used] = count + 1
        finally:
            self._unlock()
        cache[name] = index
        return index

    def node(self, name: str) -> int:
        """The index of node `name` (the same in every worker)."""
        return self._index(name, self._nodes, "node_keys", _NODES_USED)

    def group(self, name: str) -> int:
        return self._index(name, self._groups, "group_keys", _GROUPS_USED)

    # -- slots and queues ------------------------------------------------------

    def in_flight(self, node: int) -> int:
        base = node * ROWS
        return sum(self._in_flight[base : base + self._header[_HI]])

    def waiting(self, node: int) -> int:
        base = node * ROWS
        return sum(self._waiting[base : base + self._header[_HI]])

    def take(self, node: int, limit: int, queued: bool) -> bool:
        """Take a slot if fewer than `limit` are taken fleet-wide. A newcomer
        (`queued` False) never overtakes a request already waiting."""
        base = node * ROWS
        self._lock()
        try:
            hi = self._header[_HI]
            if sum(self._in_flight[base : base + hi]) >= limit:
                return False
            if not queued and any(self._waiting[base : base + hi]):
                return False
            self._in_flight[base + self.row] += 1
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
            if sum(self._waiting[base : base + self._header[_HI]]) >= depth:
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
        live = sum(self._counters[base : base + self._header[_HI]])
        return live + self._retired[counter]

    # -- health ----------------------------------------------------------------

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
            self._header[_HEALTH_LEN] = len(data)
            self._header[_HEALTH_GEN] += 1
        finally:
            self._unlock()
        return True

    def published(self, seen: int) -> tuple[int, bytes] | None:
        """(generation, data) of the latest poll if newer than `seen`."""
        if self._header[_HEALTH_GEN] == seen:
            return None
        start = OFFSETS["health"]
        self._lock()
        try:
            gen = self._header[_HEALTH_GEN]
            data = self._buf[start : start + self._header[_HEALTH_LEN]].tobytes()
        finally:
            self._unlock()
        return gen, data

    def served(self, node: str, when: float) -> None:
        """A worker got a good answer from `node` (passive health)."""
        self._served_at[self.node(node)] = when

    def served_at(self, node: str) -> float | None:
        return self._served_at[self.node(node)] or None

    def refused(self, node: str, when: float) -> None:
        """A worker could not connect to `node` at all."""
        self._refused_at[self.node(node)] = when

    def refused_at(self, node: str) -> float:
        return self._refused_at[self.node(node)]


# -- the gunicorn master (etc/gunicorn.conf.py hooks) ---------------------------

#: The directory `prepare()` created (and `cleanup()` removes), if any.
_created: str | None = None
#: The state file, set in the master before the workers are forked.
_path: str | None = None
_master: FleetState | None = None


def prepare() -> str:
    """A fresh state file in a private directory, for the workers to come
    (on_starting: before any worker exists)."""
    global _created, _master, _path
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    _created = tempfile.mkdtemp(prefix="herd-fleet-", dir=base)
    path = os.path.join(_created, "state")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        os.pwrite(fd, MAGIC, 0)
    finally:
        os.close(fd)
    _path = path
    _master = None
    return path


def worker_gone(pid: int) -> None:
    """A worker exited (child_exit): its slots and queue places are free."""
    global _master
    if _path is None or not Path(_path).exists():
        return
    if _master is None:
        _master = FleetState(_path, claim=False)
    _master.release_worker(pid)


def cleanup() -> None:
    """The router stops (on_exit): remove what `prepare()` made."""
    global _created, _path
    _path = None
    if _created is not None:
        shutil.rmtree(_created, ignore_errors=True)
        _created = None
