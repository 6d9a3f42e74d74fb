"""The bundle directory: `bundle.yaml` as frozen objects, and the tree checks.

`bundle.yaml` is the signed table of contents. Everything that is checked
without reading file contents lives here: schema, path hygiene (no `..`, no
absolute paths, no symlinks, nothing unlisted, nothing missing) and declared
sizes against what is on the stick.

`bundle.yaml` is read once (`read_index_bytes`: bounded, never through a
link); those bytes are what the signature is checked over and, only after it
holds, what `parse` turns into a `BundleDoc` (see herd.bundle.verify.check).
Parsing is bounded like the fleet manifest's: size cap and YAML alias guard.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from herd.bundle import transfer
from herd.errors import BundleError, ManifestError
from herd.manifest.loader import MAX_BYTES, parse_yaml
from herd.manifest.schema import Validator

FORMAT = "herd-bundle/v1"
INDEX = "bundle.yaml"
SIGNATURE = "bundle.yaml.sig"
NAMESPACE = "herd-bundle"
#: bundle.yaml is read whole into memory: the fleet manifest's cap (4 MiB).
MAX_INDEX_BYTES = MAX_BYTES
BLOB_RE = re.compile(r"^blobs/sha256-([0-9a-f]{64})\Z")
PART_RE = re.compile(r"^blobs/sha256-([0-9a-f]{64})\.part(\d{3,})\Z")


@dataclass(frozen=True)
class Part:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FileEntry:
    """One logical file; stored whole, or as `parts` concatenated in order."""

    path: str
    size: int
    sha256: str
    parts: tuple[Part, ...] = ()

    @property
    def stored(self) -> tuple[Part, ...]:
        """The files actually on the stick for this entry."""
        return self.parts or (Part(self.path, self.size, self.sha256),)

    @property
    def digest(self) -> str | None:
        """`sha256:HEX` when this is a blob, else None."""
        return f"sha256:{self.sha256}" if BLOB_RE.match(self.path) else None


@dataclass(frozen=True)
class Scan:
    tool: str
    verdict: str
    version: str = ""
    date: str = ""
    report: str | None = None
    builtin: str = ""


@dataclass(frozen=True)
class BundleDoc:
    """A parsed, schema-valid and self-consistent bundle.yaml."""

    name: str
    created: str
    models: Mapping[str, str]
    files: tuple[FileEntry, ...]
    scan: Scan | None
    raw: bytes

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def blob(self, digest: str) -> FileEntry | None:
        return self.file("blobs/" + digest.replace(":", "-", 1))


def schema_path() -> Path:
    """schemas/bundle.schema.json in a checkout, else the installed copy."""
    here = Path(__file__).resolve().parents[2] / "schemas" / "bundle.schema.json"
    if here.exists():
        return here
    return Path(sys.prefix) / "share" / "herd" / "schemas" / "bundle.schema.json"


@functools.cache
def _validator() -> Any:
    schema = json.loads(schema_path().read_text())
    return Validator(schema)


def _where(error: jsonschema.ValidationError) -> str:
    where = ""
    for p in error.absolute_path:
        where += f"[{p}]" if isinstance(p, int) else (f".{p}" if where else str(p))
    return where or "(top)"


def parse(raw: bytes, source: str = INDEX) -> BundleDoc:
    """Parse bundle.yaml bytes; raise `BundleError` with the bad field's path.

    Bounded: size cap, alias-expansion guard and duplicate keys refused, all
    from the fleet manifest's loader.
    """
    if len(raw) > MAX_INDEX_BYTES:
        raise BundleError(_too_big(source, len(raw)))
    if not raw.strip():
        raise BundleError(f"{source}: empty")
    try:
        doc, _ = parse_yaml(raw, source)
    except ManifestError as ex:
        first = ex.problems[0]
        where = "" if first.path == "(top)" else f" {first.path}:"
        raise BundleError(f"{source}:{first.line}:{where} {first.message}") from None
    _check_paths(doc, source)
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        raise BundleError(f"{source}: {_where(first)}: {first.message}")
    return _build(doc, raw, source)


def _unsafe(path: Any) -> str | None:
    """Why a path from bundle.yaml could escape the bundle directory, or None."""
    if not isinstance(path, str):
        return None
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        return "absolute paths are refused"
    if any(part in ("..", ".") for part in re.split(r"[/\\]", path)):
        return "'..' and '.' path components are refused"
    return None


def _check_paths(doc: Any, source: str) -> None:
    """Name path-traversal attempts precisely, before the generic schema check."""
    if not isinstance(doc, dict):
        return
    candidates: list[tuple[str, Any]] = []
    files = doc.get("files")
    for i, f in enumerate(files if isinstance(files, list) else ()):
        if isinstance(f, dict):
            candidates.append((f"files[{i}].path", f.get("path")))
            parts = f.get("parts")
            for n, p in enumerate(parts if isinstance(parts, list) else ()):
                if isinstance(p, dict):
                    candidates.append((f"files[{i}].parts[{n}].path", p.get("path")))
    if isinstance(doc.get("models"), dict):
        candidates += [(f"models.{k}", v) for k, v in doc["models"].items()]
    if isinstance(doc.get("scan"), dict):
        candidates.append(("scan.report", doc["scan"].get("report")))
    for where, path in candidates:
        why = _unsafe(path)
        if why:
            raise BundleError(f"{source}: {where}: {path!r}: {why}")


def _build(doc: dict[str, Any], raw: bytes, source: str) -> BundleDoc:
    names: dict[str, str] = {}
    for name in doc["models"]:
        other = names.setdefault(name.lower(), name)
        if other != name:
            raise BundleError(
                f"{source}: models.{name}: collides with {other}: model names are "
                "case-insensitive (Ollama resolves either to the same model)"
            )
    files = []
    seen: set[str] = set()
    folded: dict[str, str] = {}  # FAT32 and Ollama's names ignore case
    for i, f in enumerate(doc["files"]):
        parts = tuple(
            Part(p["path"], p["size"], p["sha256"]) for p in f.get("parts", ())
        )
        entry = FileEntry(f["path"], f["size"], f["sha256"], parts)
        where = f"{source}: files[{i}] ({entry.path})"
        blob = BLOB_RE.match(entry.path)
        if entry.path.startswith("blobs/") and not blob:
            raise BundleError(f"{where}: blob paths must be blobs/sha256-<64 hex>")
        if blob and blob.group(1) != entry.sha256:
            raise BundleError(f"{where}: sha256 does not match the blob's name")
        if parts and sum(p.size for p in parts) != entry.size:
            raise BundleError(f"{where}: part sizes do not add up to size {entry.size}")
        for n, part in enumerate(parts):
            m = PART_RE.match(part.path)
            if not m or m.group(1) != entry.sha256 or int(m.group(2)) != n:
                raise BundleError(
                    f"{where}: part {n} must be named {entry.path}.part{n:03d}"
                )
        for stored in entry.stored:
            if stored.path in seen or entry.path in seen:
                raise BundleError(f"{where}: listed twice")
            seen.add(stored.path)
        seen.add(entry.path)
        for path in {entry.path, *(p.path for p in entry.stored)}:
            other = folded.setdefault(path.lower(), path)
            if other != path:
                raise BundleError(
                    f"{where}: {path} and {other} differ only in case (one file "
                    "on a FAT32 stick)"
                )
        files.append(entry)
    for name, path in doc["models"].items():
        tag = name.split(":", 1)
        if path != f"manifests/{tag[0]}/{tag[1]}":
            raise BundleError(
                f"{source}: models.{name}: manifest must be manifests/{tag[0]}/{tag[1]}"
            )
        if path not in seen:
            raise BundleError(f"{source}: models.{name}: {path} is not in files")
    s = doc.get("scan")
    scan = None
    if s:
        scan = Scan(
            tool=s["tool"],
            verdict=s["verdict"],
            version=str(s.get("version", "")),
            date=str(s.get("date", "")),
            report=s.get("report"),
            builtin=s.get("builtin", ""),
        )
        if scan.report and scan.report not in seen:
            raise BundleError(f"{source}: scan.report: {scan.report} is not in files")
    return BundleDoc(
        name=doc["name"],
        created=str(doc["created"]),
        models=dict(doc["models"]),
        files=tuple(files),
        scan=scan,
        raw=raw,
    )


def _too_big(source: str, size: int) -> str:
    return f"{source}: {size:,} bytes; {INDEX} is limited to {MAX_INDEX_BYTES:,} bytes"


def read_index_bytes(root: Path) -> bytes:
    """The bytes of `root/bundle.yaml`, read once: a regular file, not a link,
    at most `MAX_INDEX_BYTES`. Nothing is parsed here."""
    path = root / INDEX
    try:
        return transfer.read_small(path, MAX_INDEX_BYTES, str(path), INDEX)
    except FileNotFoundError as ex:
        raise BundleError(f"{root}: no {INDEX}; is this a herd bundle?") from ex


def read_index(root: Path) -> BundleDoc:
    """Read and parse `root/bundle.yaml` WITHOUT its signature (tests, tools).

    Import and verify never use this: they check the signature over the bytes
    first (herd.bundle.verify.check).
    """
    return parse(read_index_bytes(root), str(root / INDEX))


def walk(root: Path) -> dict[str, int]:
    """Every regular file under `root` (relative POSIX path -> size).

    Refuses symlinks, devices, sockets and FIFOs anywhere in the tree.
    """
    found: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise BundleError(f"{rel}: symbolic links are refused in a bundle")
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"{rel}: not a regular file")
            found[rel] = st.st_size
    return found


def check_tree(root: Path, doc: BundleDoc) -> None:
    """The stick holds exactly the listed files, each of its declared size."""
    on_disk = walk(root)
    on_disk.pop(INDEX, None)
    on_disk.pop(SIGNATURE, None)
    for entry in doc.files:
        for i, stored in enumerate(entry.stored):
            what = f"part {i} of {entry.path}" if entry.parts else entry.path
            size = on_disk.pop(stored.path, None)
            if size is None:
                raise BundleError(f"{stored.path}: missing ({what} is listed)")
            if size != stored.size:
                raise BundleError(
                    f"{stored.path}: {size} bytes on disk, bundle.yaml says "
                    f"{stored.size} (truncated or altered)"
                )
    if on_disk:
        extra = sorted(on_disk)
        raise BundleError(
            f"{extra[0]}: not listed in bundle.yaml"
            + (f" (and {len(extra) - 1} more unlisted files)" if len(extra) > 1 else "")
        )


def dump(doc: dict[str, Any]) -> bytes:
    """Serialise a bundle.yaml document (stable key order, block style)."""
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).encode()
