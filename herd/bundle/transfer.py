"""Moving bytes: copy while hashing in one pass, and land files atomically.

One read of every byte: each chunk is read into a preallocated buffer, fed to
sha256 (OpenSSL, releases the GIL) and written out. A file only ever appears
under its final name after fsync and a verified digest (temp file in the same
directory, then `os.replace`), so a crash leaves at most a temp file behind.

Every source is opened without following a symbolic link, must be a regular
file of exactly its declared size once open, and is read for exactly that many
bytes: a file swapped for a link, a device or a longer file after the checks is
refused instead of copied (a link to /dev/zero would otherwise fill the disk).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from herd.errors import BundleError

CHUNK = 8 << 20
WRITEBACK_WINDOW = 64 << 20
TEMP_PREFIX = ".herd-tmp-"

Advance = Callable[[int], None]


def _noop(_: int) -> None:
    return None


@dataclass(frozen=True)
class Source:
    """A file to read: exactly `size` bytes; `label` names it in errors."""

    path: Path
    size: int
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or str(self.path)


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: Path, label: str, size: int | None = None) -> int:
    """Open a regular file without following a link; its fd, or a `BundleError`.

    O_NONBLOCK keeps a FIFO from blocking the open; the fstat after the open
    judges the file actually opened, not whatever the path named earlier.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as ex:
        if ex.errno == errno.ELOOP:
            raise BundleError(f"{label}: a symbolic link; refused") from ex
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{label}: not a regular file; refused")
        if size is not None and st.st_size != size:
            raise BundleError(
                f"{label}: {st.st_size} bytes, bundle.yaml says {size} "
                "(changed after the checks?)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path: Path, limit: int, label: str, what: str = "this file") -> bytes:
    """The whole of a small regular file (no links); refused beyond `limit` bytes.

    An oversized file is refused from its fstat size without reading it.
    """
    fd = open_regular(path, label)
    try:
        size = os.fstat(fd).st_size
        data = b"" if size > limit else _read_upto(fd, limit + 1)
    finally:
        os.close(fd)
    if size > limit or len(data) > limit:
        raise BundleError(
            f"{label}: {'over ' if size <= limit else ''}{max(size, len(data)):,} "
            f"bytes; {what} is limited to {limit:,} bytes (refused unread)"
        )
    return data


def _read_upto(fd: int, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_source(src: Source, buffer: Callable[[], bytearray]) -> Iterator[memoryview]:
    """Read exactly `src.size` bytes of `src`, each chunk into `buffer()`.

    Refuses a source that ends early or holds more than its declared size.
    """
    fd = open_regular(src.path, src.name, src.size)
    try:
        left = src.size
        while left > 0:
            buf = buffer()
            view = memoryview(buf)[: min(left, len(buf))]
            n = os.readv(fd, [view])
            if n == 0:
                raise BundleError(
                    f"{src.name}: ends {left} bytes early (truncated while reading?)"
                )
            left -= n
            yield view[:n]
        if os.read(fd, 1):
            raise BundleError(
                f"{src.name}: longer than its declared {src.size} bytes; refused"
            )
    finally:
        os.close(fd)


def _chunks(
    sources: Sequence[Source], bufs: Sequence[bytearray]
) -> Iterator[memoryview]:
    """Read `sources` in order, alternating between buffers (double buffering).

    A yielded view stays valid until the next-but-one chunk is read, so a
    consumer may still be hashing it while the next chunk is read and written.
    """
    turn = [1]

    def alternate() -> bytearray:
        turn[0] ^= 1
        return bufs[turn[0]]

    for src in sources:
        yield from _read_source(src, alternate)


def hash_files(
    sources: Sequence[Source], advance: Advance = _noop
) -> tuple[str, tuple[str, ...]]:
    """sha256 of the concatenation, and of each source on its own (one read)."""
    whole = hashlib.sha256()
    each = []
    buf = bytearray(CHUNK)
    for src in sources:
        part = hashlib.sha256()
        for view in _read_source(src, lambda: buf):
            whole.update(view)
            if len(sources) > 1:
                part.update(view)
            advance(len(view))
        each.append(part.hexdigest() if len(sources) > 1 else "")
    return whole.hexdigest(), tuple(each)


def confirm(path: Path, size: int, sha256: str, advance: Advance = _noop) -> bool:
    """True when `path` is a regular file of `size` bytes hashing to `sha256`.

    A file's size says nothing about its content: whatever sits under a
    content-addressed name is trusted only once its hash is confirmed.
    """
    try:
        got, _ = hash_files([Source(path, size)], advance)
    except (BundleError, FileNotFoundError):
        return False
    return got == sha256


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
    sources: Sequence[Source],
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
