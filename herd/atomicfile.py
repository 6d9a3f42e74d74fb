"""Replacing a small file atomically: temp file, fsync, mode, optional check, rename.

A reader sees the old file or the new one, never a part of either, and a
failure at any step (disk full, a check that rejects the new text, Ctrl-C)
leaves the old file as it was and no temp file behind. Used for the state
pointer (herd.pointer) and the files `herd apply` writes for the host (the
firewall drop-in, keepalived.conf). Bundle files have their own, resumable,
copy (herd.bundle.transfer).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_file(
    target: Path,
    data: bytes,
    *,
    mode: int,
    prefix: str = ".herd-",
    suffix: str = "",
    check: Callable[[Path], None] | None = None,
) -> None:
    """Write `data` to a temp file next to `target` (`prefix`...`suffix`),
    fsync it, give it `mode`, let `check(temp)` raise to refuse it, and
    rename it over `target`."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
