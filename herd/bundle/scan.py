"""Content checks every bundle file passes, at create and again at import.

herd's built-in checks look at what a blob claims to be (its Ollama media type):
GGUF layers must have a sane GGUF header, text layers must be UTF-8, JSON layers
must parse to the right shape, pickle-based weights are refused outright (they
execute code when loaded), and any media type herd does not know is refused.
An optional external scanner (`bundles.scan_command`, e.g. clamscan) then runs
once per file and must exit 0.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import zipfile
from pathlib import Path
from typing import BinaryIO

from herd.bundle import gguf, transfer
from herd.errors import BundleError

CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_P = "application/vnd.ollama.image."
GGUF_TYPES = frozenset(_P + t for t in ("model", "adapter", "projector", "draft"))
TEXT_TYPES = frozenset(_P + t for t in ("template", "prompt", "system", "license"))
JSON_OBJECT_TYPES = frozenset({_P + "params", CONFIG})
JSON_ARRAY_TYPES = frozenset({_P + "messages"})
KNOWN_TYPES = GGUF_TYPES | TEXT_TYPES | JSON_OBJECT_TYPES | JSON_ARRAY_TYPES

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Largest text/JSON layer herd will read whole to check it.
MAX_TEXT_LAYER = 64 << 20
SCAN_TIMEOUT_S = 3600


def looks_like_pickle(path: str | os.PathLike[str] | BinaryIO) -> str | None:
    """Why `path` (or an open binary file) is a pickle-based format, else None."""
    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as fh:
            return looks_like_pickle(fh)
    fh = path
    fh.seek(0)
    head = fh.read(4)
    # Pickle protocol 2+ starts with the PROTO opcode 0x80 and a protocol byte.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"pickle data (protocol {head[1]})"
    if head[:2] == b"PK":
        try:
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                if any(n.endswith(".pkl") for n in zf.namelist()):
                    return "a PyTorch zip checkpoint holding pickle data"
        except (zipfile.BadZipFile, OSError):
            return None
    return None


def check_weights_file(path: str | os.PathLike[str]) -> gguf.GGUFInfo:
    """A GGUF file a user hands to `bundle create --from-gguf`, or refuse it."""
    name = Path(path).name
    pickled = looks_like_pickle(path)
    if pickled:
        raise BundleError(
            f"{name}: refused: {pickled}; pickle-based formats run code when "
            "loaded (convert to GGUF first)"
        )
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise BundleError(f"{name}: refused: {Path(path).suffix} is a pickle format")
    with open(path, "rb") as fh:
        return gguf.read_header(fh, os.fstat(fh.fileno()).st_size, name)


def check_blob(path: str | os.PathLike[str], media_type: str, label: str) -> None:
    """Check one layer (or config) blob against its media type; raise if bad."""
    if media_type not in KNOWN_TYPES:
        raise BundleError(f"{label}: refused: unknown media type {media_type!r}")
    # One open, no link followed; every check reads that same open file.
    with os.fdopen(transfer.open_regular(Path(path), label), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if media_type in GGUF_TYPES:
            pickled = looks_like_pickle(fh)
            if pickled:
                raise BundleError(f"{label}: refused: {pickled} in a GGUF layer")
            fh.seek(0)
            gguf.read_header(fh, size, label)
            return
        if size > MAX_TEXT_LAYER:
            raise BundleError(
                f"{label}: {media_type} layer of {size} bytes is too large"
            )
        data = fh.read(MAX_TEXT_LAYER + 1)
    if len(data) > MAX_TEXT_LAYER:
        raise BundleError(f"{label}: {media_type} layer grew while being read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as ex:
        raise BundleError(f"{label}: not UTF-8 text ({ex.reason})") from ex
    if media_type in TEXT_TYPES:
        return
    try:
        value = json.loads(text)
    except ValueError as ex:
        raise BundleError(f"{label}: not valid JSON: {ex}") from ex
    if media_type in JSON_OBJECT_TYPES and not isinstance(value, dict):
        raise BundleError(f"{label}: must be a JSON object")
    if media_type in JSON_ARRAY_TYPES and not isinstance(value, list):
        raise BundleError(f"{label}: must be a JSON array")


def run_scan_command(
    command: str | None, path: str | os.PathLike[str], label: str
) -> None:
    """Run the site's scanner on one file (`{path}` is substituted); must exit 0."""
    if not command:
        return
    argv = [a.replace("{path}", str(path)) for a in shlex.split(command)]
    if "{path}" not in command:
        argv.append(str(path))
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SCAN_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as ex:
        raise BundleError(f"{label}: scanner {argv[0]!r} could not run: {ex}") from ex
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines()
        detail = said[-1] if said else f"exit {done.returncode}"
        raise BundleError(
            f"{label}: refused by scanner {argv[0]!r} (exit {done.returncode}): "
            f"{detail}"
        )
