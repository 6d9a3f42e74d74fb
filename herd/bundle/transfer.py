"""Moving bytes: copy while hashing in one pass, and land files atomically.

One read of every byte: each chunk is read into a preallocated buffer, fed to
sha256 (OpenSSL, releases the GIL) and written out. A file only ever appears
under its final name after fsync and a verified digest (temp file in the same
directory, then `os.replace`), so a crash leaves at most a temp file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from herd.errors import BundleError

CHUNK = 8 << 20
WRITEBACK_WINDOW = 64 << 20
TEMP_PREFIX = ".herd-tmp-"

Advance = Callable[[int], None]


def _noop(_: int) -> None:
    return None


def _chunks(sources: Sequence[Path], bufs: Sequence[bytearray]) -> Iterator[memoryview]:
    """Read `sources` in order, alternating between buffers (double buffering).

    A yielded view stays valid until the next-but-one chunk is read, so a
    consumer may still be hashing it while the next chunk is read and written.
    """
    turn = 0
    for src in sources:
        with open(src, "rb", buffering=0) as fh:
            while n := fh.readinto(bufs[turn]):
                yield memoryview(bufs[turn])[:n]
                turn ^= 1


def hash_files(
    sources: Sequence[Path], advance: Advance = _noop
) -> tuple[str, tuple[str, ...]]:
    """sha256 of the concatenation, and of each source on its own (one read)."""
    whole = hashlib.sha256()
    each = []
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for src in sources:
        part = hashlib.sha256()
        with open(src, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                whole.update(view[:n])
                if len(sources) > 1:
                    part.update(view[:n])
                advance(n)
        each.append(part.hexdigest() if len(sources) > 1 else "")
    return whole.hexdigest(), tuple(each)


def _start_writeback(fd: int, start: int, end: int) -> None:
    """Have the kernel write back (and later drop) what was just written.

    FADV_DONTNEED starts asynchronous writeback of dirty pages and drops clean
    ones, so the final fsync has little left to wait for and a multi-GiB copy
    does not evict the rest of the page cache.
    """
    if hasattr(os, "posix_fadvise"):
        lo = max(0, start - WRITEBACK_WINDOW)
        os.posix_fadvise(fd, lo, end - lo, os.POSIX_FADV_DONTNEED)


def temp_path(directory: Path, hint: str = "") -> Path:
    return directory / f"{TEMP_PREFIX}{hint}{secrets.token_hex(4)}"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_verified(
    sources: Sequence[Path],
    final: Path,
    expected_sha256: str,
    *,
    label: str,
    advance: Advance = _noop,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    temp_dir: Path | None = None,
) -> None:
    """Concatenate `sources` into `final`, hashing as it goes; refuse on mismatch.

    The temp file lives in `temp_dir` (default: `final`'s directory, which must
    be on the same filesystem). Nothing appears at `final` unless the sha256 of
    the bytes written equals `expected_sha256`.
    """
    tmp = temp_path(temp_dir or final.parent, final.name[:19] + "-")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        digest = hashlib.sha256()
        # Hash chunk k in a worker thread (OpenSSL releases the GIL) while this
        # thread writes chunk k and reads chunk k+1: one pass, two cores.
        with ThreadPoolExecutor(1, thread_name_prefix="herd-sha256") as pool:
            hashing: Future | None = None
            offset = advised = 0
            for chunk in _chunks(sources, (bytearray(CHUNK), bytearray(CHUNK))):
                if hashing is not None:
                    hashing.result()
                hashing = pool.submit(digest.update, chunk)
                view = chunk
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    advance(written)
                offset += len(chunk)
                if offset - advised >= WRITEBACK_WINDOW:
                    _start_writeback(fd, advised, offset)
                    advised = offset
            if hashing is not None:
                hashing.result()
        os.fsync(fd)
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        os.close(fd)
        fd = -1
        got = digest.hexdigest()
        if got != expected_sha256:
            raise BundleError(
                f"{label}: sha256 mismatch: expected {expected_sha256}, got {got} "
                "(corrupted or altered)"
            )
        os.replace(tmp, final)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(
    final: Path,
    data: bytes,
    *,
    temp_dir: Path | None = None,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write small `data` to `final` via temp file + fsync + rename."""
    tmp = temp_path(temp_dir or final.parent)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
