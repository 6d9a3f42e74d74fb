"""The manifest the router serves, and its hot reload from `STATE_DIR/current.json`.

`herd apply` replaces the pointer atomically. The watcher stats it at most
every `CHECK_S` and, when its inode, size or mtime changed, loads the new
revision through the real manifest loader. A revision that fails to load never
replaces a good one (the error is logged, the old fleet keeps serving).
In-flight requests hold the `Fleet` they started with, so a reload never
disturbs a running stream.

Every gunicorn worker runs its own watcher and so refuses a bad revision on
its own; `herd_reload_errors_total` (the workers' counts summed) would count
one bad apply once per worker, and only in workers that had started. So a
refusal is counted by the first worker to refuse that pointer: each writes
the pointer's stamp to `STATE_DIR/reload-refused` under an exclusive lock and
counts only when the stamp there was another (`_first_to_refuse`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from herd.errors import HerdError, StateError
from herd.manifest import load_bytes
from herd.manifest.model import Fleet
from herd.store import POINTER_NAME, read_pointer

log = logging.getLogger("herd.router")

CHECK_S = 0.5
#: The stamp of the newest refused pointer (the workers count a refusal once).
REFUSED_NAME = "reload-refused"


@dataclass(frozen=True)
class Served:
    """One loaded revision."""

    fleet: Fleet
    revision: int | None
    sha256: str | None
    #: Directory relative paths in the manifest resolve against.
    base_dir: str | None = None


class StaticSource:
    """A fixed fleet (tests, benchmarks)."""

    def __init__(self, fleet: Fleet, revision: int | None = None):
        self.served = Served(fleet, revision, None)
        self.listeners: list[Callable[[Served], None]] = []

    def current(self) -> Served:
        return self.served

    def replace(self, fleet: Fleet, revision: int | None = None) -> None:
        self.served = Served(fleet, revision, None)
        for listener in self.listeners:
            listener(self.served)

    def check(self) -> bool:
        return False


class PointerSource:
    """The fleet of the state directory's current revision, reloaded on change."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = Path(state_dir) / POINTER_NAME
        self._state_dir = state_dir
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self.listeners: list[Callable[[Served], None]] = []
        self.last_error: str | None = None
        #: New revisions refused so far that this worker was the first of the
        #: router's workers to refuse (herd_reload_errors_total sums them).
        self.refusals = 0
        self.served = self._load_initial()

    def _load_initial(self) -> Served:
        pointer = read_pointer(self._state_dir)
        if pointer is None:
            raise StateError(
                f"no applied manifest in {self._state_dir} "
                "(run `herd apply FILE` first, or pass --state-dir)"
            )
        self._stamp = self._stat()
        return self._build(pointer)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    @staticmethod
    def _build(pointer) -> Served:
        fleet = load_bytes(
            pointer.manifest.encode("utf-8"),
            f"revision {pointer.revision}",
            pointer.base_dir,
        )
        return Served(fleet, pointer.revision, pointer.sha256, pointer.base_dir)

    def current(self) -> Served:
        """The fleet for a new request (stats the pointer at most every CHECK_S)."""
        if self._clock() - self._checked >= CHECK_S:
            self.check()
        return self.served

    def check(self) -> bool:
        """Reload if the pointer changed; True when a new revision took effect.

        Never raises: a pointer that is missing, unreadable, of the wrong shape
        or whose manifest does not load is refused as a whole, the served
        revision stays, and `last_error` says why until a good pointer lands.
        """
        self._checked = self._clock()
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            pointer = read_pointer(self._state_dir)
            if pointer is None:
                self._refuse(f"{self.path} is missing")
                return False
            if pointer.sha256 == self.served.sha256:
                self.last_error = None  # back to (or still on) what is served
                return False
            served = self._build(pointer)
        except Exception as ex:  # noqa: BLE001 - a bad pointer must not fail requests
            self._refuse(str(ex) if isinstance(ex, HerdError) else repr(ex))
            return False
        self.served = served
        self.last_error = None
        log.warning("serving revision %s", served.revision)
        for listener in self.listeners:
            listener(served)
        return True

    def _refuse(self, error: str) -> None:
        self.last_error = error
        if self._first_to_refuse():
            self.refusals += 1
        log.error(
            "kept revision %s: new manifest refused: %s", self.served.revision, error
        )

    def _first_to_refuse(self) -> bool:
        """True unless another worker already refused this very pointer.

        The pointer's stamp (inode, size, mtime) names the attempt: every
        worker stats the same file. Where the file cannot be used (a state
        directory this user may not write), each worker counts its own.
        """
        key = " ".join(map(str, self._stamp)) if self._stamp else "missing"
        path = Path(self._state_dir) / REFUSED_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read and a write
            if os.read(fd, 64).decode("ascii", "replace") == key:
                return False
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, key.encode("ascii"))
            return True
        except OSError:
            return True
        finally:
            os.close(fd)  # releases the lock
