"""`STATE_DIR/current.json`: the revision a router serves, and the lock that moves it.

The pointer holds the revision number, its sha256, the manifest text and the
directory relative paths in it resolve against. It is replaced atomically
(write temp, fsync, rename), so a reader never sees half of one; it is read
strictly (every field's type, the digest of the text), so a damaged or
hand-written pointer is refused as a whole, never half-used.

Only a holder of `STATE_DIR/herd.lock` (an advisory flock) writes it, and only
with the head revision, so pointers land in commit order: it never moves back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.atomicfile import replace_file
from herd.errors import StateError

POINTER_NAME = "current.json"
LOCK_NAME = "herd.lock"
#: A pointer holds one manifest (at most 4 MiB), JSON-escaped.
POINTER_MAX_BYTES = 32 * 1024 * 1024
#: Each key of a pointer and the types its value may have.
POINTER_FIELDS: dict[str, tuple[type, ...]] = {
    "revision": (int,),
    "sha256": (str,),
    "base_dir": (str, type(None)),
    "manifest": (str,),
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXPECTED = {int: "an integer", str: "a string", type(None): "null"}
_FOUND = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_FOUND.update({list: "an array", dict: "an object", type(None): "null"})


@dataclass(frozen=True)
class Pointer:
    """What `current.json` says: the revision a router should serve."""

    revision: int
    sha256: str
    base_dir: str | None
    manifest: str


def read_pointer(state_dir: str | os.PathLike[str]) -> Pointer | None:
    """The revision a router should serve, or None before the first apply."""
    path = Path(state_dir) / POINTER_NAME
    try:
        with path.open("rb") as fh:
            data = fh.read(POINTER_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as ex:
        raise StateError(f"{path}: unreadable pointer: {ex}") from ex
    if len(data) > POINTER_MAX_BYTES:
        raise StateError(f"{path}: pointer is over {POINTER_MAX_BYTES} bytes")
    return parse_pointer(data, path)


def parse_pointer(data: bytes, where: str | os.PathLike[str]) -> Pointer:
    """Check and parse a pointer's bytes (StateError naming the bad field)."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as ex:
        raise StateError(f"{where}: unreadable pointer: {ex}") from ex
    if not isinstance(raw, dict):
        raise StateError(f"{where}: pointer is not a JSON object")
    unknown = sorted(set(raw) - set(POINTER_FIELDS))
    if unknown:
        raise StateError(f"{where}: unknown key {unknown[0]!r} in pointer")
    for key, types in POINTER_FIELDS.items():
        if key not in raw:
            raise StateError(f"{where}: {key} missing from pointer")
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(_EXPECTED[t] for t in types)
            found = _FOUND.get(type(value), type(value).__name__)
            raise StateError(f"{where}: {key} must be {expected}, not {found}")
    if raw["revision"] < 1:
        raise StateError(f"{where}: revision must be a positive integer")
    if not _SHA256.fullmatch(raw["sha256"]):
        raise StateError(f"{where}: sha256 must be 64 lowercase hex digits")
    try:
        manifest = raw["manifest"].encode("utf-8")
    except UnicodeEncodeError as ex:
        raise StateError(f"{where}: manifest is not valid UTF-8: {ex}") from ex
    if hashlib.sha256(manifest).hexdigest() != raw["sha256"]:
        raise StateError(f"{where}: manifest does not match its sha256")
    return Pointer(**raw)


def write_pointer(state_dir: str | os.PathLike[str], pointer: Pointer) -> None:
    """Replace the pointer atomically (call with `state_lock` held)."""
    data = json.dumps(
        {
            "revision": pointer.revision,
            "sha256": pointer.sha256,
            "base_dir": pointer.base_dir,
            "manifest": pointer.manifest,
        }
    ).encode()
    replace_file(Path(state_dir) / POINTER_NAME, data, mode=0o640, prefix=".current.")


@contextlib.contextmanager
def state_lock(state_dir: str | os.PathLike[str], timeout_s: float) -> Iterator[Any]:
    """Hold `STATE_DIR/herd.lock`, waiting up to `timeout_s` for another
    herd command to let go (StateError then)."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as ex:
        raise StateError(f"cannot lock state in {state_dir}: {ex}") from ex
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateError(
                        f"state in {state_dir} is busy: another herd command "
                        f"holds {path}; try again"
                    ) from None
                time.sleep(0.05)
        yield path
    finally:
        os.close(fd)  # releases the lock
