"""A `herd sim` node's model store on disk, laid out exactly like Ollama's.

`blobs/sha256-HEX` holds every layer and config; `manifests/HOST/NS/MODEL/TAG`
holds each model's manifest bytes, verbatim as pulled. A model's digest is the
sha256 of those bytes and its size the sum of its layers and config, as
Ollama's /api/tags reports them. Names parse like Ollama's: from the right,
`[host/][namespace/]model[:tag]`, defaults `registry.ollama.ai`, `library`,
`latest`; lookups are case-insensitive (the sim keeps everything lower-case).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
_HOST_RE = re.compile(r"^[a-z0-9_][a-z0-9_.:-]{0,349}\Z")
_NS_RE = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,79}\Z")
_PART_RE = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,79}\Z")


class StoreError(Exception):
    """An Ollama-worded store failure with the HTTP status Ollama gives it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Name:
    """A fully qualified Ollama model name."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: Any) -> Name:
        if not isinstance(text, str) or not text.strip():
            raise StoreError(400, "model is required")
        raw = text.strip().lower()
        raw = raw.split("://", 1)[-1]
        head, _, last = raw.rpartition("/")
        model, colon, tag = last.partition(":")
        parts = head.split("/") if head else []
        namespace = parts.pop() if parts else DEFAULT_NAMESPACE
        host = "/".join(parts) if parts else DEFAULT_HOST
        name = cls(host, namespace, model, tag if colon else "latest")
        if not (
            _HOST_RE.match(name.host)
            and _NS_RE.match(name.namespace)
            and _PART_RE.match(name.model)
            and _PART_RE.match(name.tag)
        ):
            raise StoreError(400, f"invalid model name {text!r}")
        return name

    @property
    def display(self) -> str:
        """Ollama's `DisplayShortest`: the long form for any other registry."""
        short = f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return (
                short
                if self.namespace == DEFAULT_NAMESPACE
                else (f"{self.namespace}/{short}")
            )
        return f"{self.host}/{self.namespace}/{short}"

    @property
    def relpath(self) -> Path:
        return Path(self.host, self.namespace, self.model, self.tag)


@dataclass(frozen=True)
class Stored:
    """One model in the store, as /api/tags lists it."""

    name: str
    digest: str
    size: int
    modified: float
    blobs: tuple[str, ...]


def manifest_blobs(raw: bytes) -> list[tuple[str, int]]:
    """(digest, size) of every layer, then the config, from manifest bytes."""
    try:
        doc = json.loads(raw)
        entries = [
            *doc.get("layers", []),
            *([doc["config"]] if "config" in doc else []),
        ]
        out = [(str(e["digest"]), int(e["size"])) for e in entries if e.get("digest")]
    except (ValueError, TypeError, KeyError, AttributeError) as ex:
        raise StoreError(500, f"invalid manifest: {ex}") from ex
    for digest, size in out:
        if not re.match(r"^sha256:[0-9a-f]{64}\Z", digest) or size < 0:
            raise StoreError(500, f"invalid manifest: bad layer {digest!r}")
    return out


class SimStore:
    """The directory; `free_bytes` (None: unlimited) simulates a small disk."""

    def __init__(self, root: Path, free_bytes: int | None = None):
        self.root = Path(root)
        self.free_bytes = free_bytes
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-", 1)

    def manifest_path(self, name: Name) -> Path:
        return self.root / "manifests" / name.relpath

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "blobs").iterdir())

    def room(self) -> int | None:
        """Bytes that may still be written (None: no limit)."""
        if self.free_bytes is None:
            return None
        return max(0, self.free_bytes - self.used_bytes())

    def models(self) -> list[Stored]:
        """Every model, newest first (as /api/tags sorts)."""
        out = []
        for path in (self.root / "manifests").glob("*/*/*/*"):
            if not path.is_file():
                continue
            rel = path.relative_to(self.root / "manifests").parts
            try:
                name = Name(*rel)
                raw = path.read_bytes()
                blobs = manifest_blobs(raw)
            except (StoreError, OSError, TypeError):
                continue
            out.append(
                Stored(
                    name=name.display,
                    digest=hashlib.sha256(raw).hexdigest(),
                    size=sum(size for _, size in blobs),
                    modified=path.stat().st_mtime,
                    blobs=tuple(d for d, _ in blobs),
                )
            )
        return sorted(out, key=lambda m: (-m.modified, m.name))

    def read_manifest(self, name: Name) -> bytes | None:
        path = self.manifest_path(name)
        return path.read_bytes() if path.is_file() else None

    def write_manifest(self, name: Name, raw: bytes) -> None:
        """Atomically (temp file + rename), mode 0644, as Ollama writes it."""
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(raw)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def copy(self, source: Any, destination: Any) -> None:
        """`/api/copy`: the manifest only; the blobs are shared."""
        src, dst = Name.parse(source), Name.parse(destination)
        raw = self.read_manifest(src)
        if raw is None:
            raise StoreError(404, f"model '{source}' not found")
        self.write_manifest(dst, raw)
        os.utime(self.manifest_path(dst), (time.time(), time.time()))

    def delete(self, model: Any) -> None:
        """`/api/delete`: the manifest, then every blob no manifest still uses."""
        name = Name.parse(model)
        path = self.manifest_path(name)
        if not path.is_file():
            raise StoreError(404, f"model '{model}' not found")
        path.unlink()
        for parent in path.parents:
            if parent == self.root / "manifests":
                break
            with contextlib.suppress(OSError):
                parent.rmdir()
        self.prune()

    def prune(self) -> None:
        used = {d for m in self.models() for d in m.blobs}
        for blob in (self.root / "blobs").iterdir():
            digest = blob.name.replace("-", ":", 1)
            if blob.name.endswith("-partial") or "-partial-" in blob.name:
                continue  # resumable downloads stay
            if digest not in used:
                blob.unlink(missing_ok=True)
