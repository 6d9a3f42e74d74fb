"""The bundle store scrub: re-hash blobs in the background, a bounded amount
per tick, and remember any whose content no longer matches its name.

Each blob is stored as `STORE/blobs/sha256-HEX`, so its name is its digest.
`Scrub.tick()` reads at most `budget` bytes (a large blob is hashed across
several ticks, its hash state kept in memory) and moves on through the blobs
in name order, wrapping around: over time every blob is checked, and the I/O
per tick stays bounded whatever the store's size. The results are written to
`STATE_DIR/scrub.json` (atomically) so every router worker and `herd health`
read the same findings; only the worker holding `STATE_DIR/scrub.lock` scrubs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.health.snapshot import ScrubFacts

log = logging.getLogger("herd.router")

STATE_NAME = "scrub.json"
LOCK_NAME = "scrub.lock"
CHUNK = 1024 * 1024
#: Blobs started per tick at most (bounds a tick over many tiny or unreadable blobs).
STEPS_MAX = 256
BLOB = re.compile(r"^sha256-([0-9a-f]{64})\Z")


class Scrub:
    """Rotating, bounded re-hashing of one bundle store's blobs."""

    def __init__(
        self,
        store: Callable[[], Path],
        state_dir: str | os.PathLike[str],
        *,
        budget: int,
        clock: Callable[[], float] = time.time,
        pause: Callable[[], Any] = lambda: None,
    ):
        self.store = store
        self.state_path = Path(state_dir) / STATE_NAME
        self.lock_path = Path(state_dir) / LOCK_NAME
        self.budget = budget
        self.clock = clock
        #: Called between chunks (the router passes gevent.sleep(0): yield).
        self.pause = pause
        self._lock: Any = None
        self._root: Path | None = None
        # The blob being hashed: (name, size, mtime_ns, offset, hasher).
        self._current: tuple[str, int, int, int, Any] | None = None
        self.state = self._load()

    def _load(self) -> dict[str, Any]:
        state = read_state(self.state_path)
        state.setdefault("mismatches", [])
        state.setdefault("verified", 0)
        state.setdefault("full_passes", 0)
        state.setdefault("cursor", "")
        return state

    def holds_lock(self) -> bool:
        """True when this process scrubs (one worker of several)."""
        if self._lock is not None:
            return True
        try:
            handle = self.lock_path.open("a")
        except OSError:
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock = handle
        return True

    def _blobs(self, root: Path) -> list[str]:
        try:
            names = [e.name for e in os.scandir(root / "blobs") if BLOB.match(e.name)]
        except OSError:
            return []
        return sorted(names)

    def _next(self, root: Path) -> str | None:
        """The blob after the cursor, wrapping around (a full pass done)."""
        names = self._blobs(root)
        self.state["blobs"] = len(names)
        if not names:
            return None
        cursor = self.state["cursor"]
        for name in names:
            if name > cursor:
                return name
        self.state["full_passes"] += 1
        present = set(names)
        self.state["mismatches"] = [
            d for d in self.state["mismatches"] if d.replace(":", "-") in present
        ]
        return names[0]

    def tick(self) -> int:
        """Hash up to `budget` bytes; returns the bytes read."""
        root = Path(self.store())
        if root != self._root:
            self._root, self._current = root, None
            self.state.update(store=str(root), cursor="", mismatches=[], verified=0)
            self.state["full_passes"] = 0
        read = 0
        for _ in range(STEPS_MAX):
            if read >= self.budget:
                break
            if self._current is None:
                name = self._next(root)
                if name is None:
                    break
                self.state["cursor"] = name
                try:
                    st = (root / "blobs" / name).stat()
                except OSError:
                    continue  # removed meanwhile: the next one
                self._current = (name, st.st_size, st.st_mtime_ns, 0, hashlib.sha256())
            read += self._step(root, self.budget - read)
            self.pause()
            if self._current is not None and read == 0:
                break
        self.state["last_tick"] = self.clock()
        self._save()
        return read

    def _step(self, root: Path, allowance: int) -> int:
        """Hash one blob further, by up to `allowance` bytes."""
        assert self._current is not None
        name, size, mtime, offset, hasher = self._current
        path = root / "blobs" / name
        read = 0
        try:
            st = path.stat()
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                self._current = None  # replaced meanwhile: next pass will see it
                return 0
            with path.open("rb") as handle:
                handle.seek(offset)
                while read < allowance:
                    chunk = handle.read(min(CHUNK, allowance - read))
                    if not chunk:
                        break
                    hasher.update(chunk)
                    read += len(chunk)
                    self.pause()
        except OSError as ex:
            log.warning("bundle store scrub: cannot read %s: %s", path, ex.strerror)
            self._current = None
            return read
        offset += read
        if offset < size:
            self._current = (name, size, mtime, offset, hasher)
            return read
        self._current = None
        digest = "sha256:" + name.removeprefix("sha256-")
        bad = set(self.state["mismatches"])
        if hasher.hexdigest() == name.removeprefix("sha256-"):
            bad.discard(digest)
            self.state["verified"] += 1
        else:
            if digest not in bad:
                log.error("bundle store scrub: %s does not match its digest", path)
            bad.add(digest)
        self.state["mismatches"] = sorted(bad)
        return max(read, 1)  # a finished empty blob still counts as progress

    def _save(self) -> None:
        data = json.dumps(self.state, sort_keys=True).encode()
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=".scrub.")
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, self.state_path)

    def run(self, stopped: Callable[[], bool], interval_s: float) -> None:
        """The background loop (a greenlet in the router)."""
        import gevent

        self.pause = lambda: gevent.sleep(0)  # yield to requests between chunks
        while not stopped():
            try:
                if self.holds_lock():
                    self.tick()
            except Exception:  # noqa: BLE001 - the scrub must never die
                log.exception("bundle store scrub failed")
            gevent.sleep(interval_s)


#: scrub.json's keys and the type each must have (counts are ints >= 0,
#: `last_tick` a finite number of seconds).
_STATE_TYPES: dict[str, Callable[[Any], bool]] = {
    "store": lambda v: isinstance(v, str),
    "cursor": lambda v: isinstance(v, str),
    "blobs": lambda v: type(v) is int and v >= 0,
    "verified": lambda v: type(v) is int and v >= 0,
    "full_passes": lambda v: type(v) is int and v >= 0,
    "mismatches": lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v),
    "last_tick": lambda v: type(v) in (int, float) and math.isfinite(v),
}


def read_state(path: Path) -> dict[str, Any]:
    """scrub.json as written by `Scrub`, or {} when it is missing or damaged.

    The file is ours (written atomically), but a disk error or a hand edit can
    leave any value in it: one of a wrong type would make the scrub fail on
    every tick and /dashboard/api/health answer 500. So the whole file is
    trusted only if every known key holds its type; else the scrub starts
    over, as on a new store (and rewrites the file on its next tick).
    """
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(state, dict):
        return {}
    for key, valid in _STATE_TYPES.items():
        if key in state and not valid(state[key]):
            return {}
    return state


def read_facts(
    state_dir: str | os.PathLike[str], now: float, store: str | None = None
) -> ScrubFacts | None:
    """What the scrub found (from scrub.json), or None if it never ran (or
    last ran on another store than `store`)."""
    state = read_state(Path(state_dir) / STATE_NAME)
    if "last_tick" not in state:
        return None
    if store is not None and state.get("store") != store:
        return None
    return ScrubFacts(
        store=str(state.get("store")),
        blobs=state.get("blobs", 0),
        verified=state.get("verified", 0),
        mismatches=tuple(state.get("mismatches", ())),
        last_tick_age_s=max(0.0, now - state["last_tick"]),
        full_passes=state.get("full_passes", 0),
    )
