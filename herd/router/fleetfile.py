"""The file behind the fleet state (herd.router.fleetstate): its layout, and
its life in the gunicorn master.

The master creates the file before it forks any worker (`prepare()`, from
gunicorn's on_starting hook): a private directory (in /dev/shm when it is
writable, so the pages never go to disk) with one sparse file of `SIZE`
bytes. Every worker maps it (`FleetState.attach()`: the path is inherited
across the fork). When a worker exits, the master frees the slots and queue
places it held (`worker_gone()`, child_exit); when the router stops, the
directory goes (`cleanup()`, on_exit).

The layout is fixed: 8-byte aligned regions (below), counts as signed 64-bit
words, times and rate-limit buckets as doubles, names as 16-byte BLAKE2b
digests in first-come order (the same index in every worker).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

MAGIC = b"HERDFS01"
#: Worker rows (at most this many workers at once; rows of gone workers are reused).
ROWS = 128
#: Distinct node names and client groups the file can hold.
NODES = 4096
GROUPS = 1024
#: Bytes for the published health poll (sparse: only what is written is used).
HEALTH_BYTES = 16 * 1024 * 1024
#: Counted label combinations (herd.router.observe.counts) and the bytes of
#: one's label values (every name a valid manifest allows fits).
SERIES = 8192
LABELS_BYTES = 2048

#: Counters (per row; a gone row's values are kept in the retired totals).
REQUESTS, FAILURES, TRACES_WRITTEN, TRACES_DROPPED, WRITE_FAILURES, UNRECORDED = range(
    6
)
#: Gauges (per row; a gone row's values are dropped).
TRACES_PENDING = 6
COUNTERS = 8
GAUGES = (TRACES_PENDING,)

# Header words: highest row in use + 1, nodes and groups known, health
# generation and length, SOLO: 1 while one worker at most uses the file
# (set by `prepare(workers=1)`, cleared for good by a second worker's claim),
# and the label combinations counted.
HI, NODES_USED, GROUPS_USED, HEALTH_GEN, HEALTH_LEN, SOLO, SERIES_USED = range(7)
KEY = 16  # bytes of a name's digest


def _layout() -> tuple[dict[str, int], int]:
    """Byte offsets of every region (8-byte aligned) and the total size."""
    sizes = {
        "magic": 8,
        "header": 8 * 8,
        "pids": 8 * ROWS,
        "node_keys": KEY * NODES,
        "group_keys": KEY * GROUPS,
        "in_flight": 8 * NODES * ROWS,
        "waiting": 8 * NODES * ROWS,
        "counters": 8 * COUNTERS * ROWS,
        "retired": 8 * COUNTERS,
        "served_at": 8 * NODES,
        "refused_at": 8 * NODES,
        "buckets": 8 * 4 * GROUPS,
        "series_keys": KEY * SERIES,
        "series_labels": LABELS_BYTES * SERIES,
        "series": 8 * SERIES * ROWS,
        "series_retired": 8 * SERIES,
        "health": HEALTH_BYTES,
    }
    offsets, at = {}, 0
    for name, size in sizes.items():
        offsets[name] = at
        at += (size + 7) // 8 * 8
    return offsets, at


OFFSETS, SIZE = _layout()


def key(name: str) -> bytes:
    return hashlib.blake2b(name.encode("utf-8"), digest_size=KEY).digest()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: The directory `prepare()` created (and `cleanup()` removes), if any.
_created: str | None = None
#: The state file, set in the master before the workers are forked.
_path: str | None = None
_master: Any = None  # the master's FleetState, made on first use


def prepare(workers: int | None = None) -> str:
    """A fresh state file in a private directory, for the workers to come
    (on_starting: before any worker exists). With `workers` 1 the file is
    marked SOLO: the one worker takes no lock (see herd.router.fleetstate)."""
    global _created, _master, _path
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    _created = tempfile.mkdtemp(prefix="herd-fleet-", dir=base)
    path = os.path.join(_created, "state")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        os.pwrite(fd, MAGIC, 0)
        if workers == 1:
            os.pwrite(fd, (1).to_bytes(8, sys.byteorder), OFFSETS["header"] + 8 * SOLO)
    finally:
        os.close(fd)
    _path = path
    _master = None
    return path


def path() -> str | None:
    """The state file `prepare()` made in the master (inherited by its workers)."""
    return _path


def worker_gone(pid: int) -> None:
    """A worker exited (child_exit): its slots and queue places are free."""
    global _master
    if _path is None or not Path(_path).exists():
        return
    if _master is None:
        from herd.router.fleetstate import FleetState

        _master = FleetState(_path, claim=False)
    _master.release_worker(pid)


def cleanup() -> None:
    """The router stops (on_exit): remove what `prepare()` made."""
    global _created, _path
    _path = None
    if _created is not None:
        shutil.rmtree(_created, ignore_errors=True)
        _created = None
