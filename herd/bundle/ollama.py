"""Ollama's on-disk model store: manifests, blobs and how to write them safely.

herd's own bundle store uses the very same layout (`blobs/sha256-HEX`,
`manifests/registry.ollama.ai/library/NAME/TAG`), so the router can serve it
as a registry and installing into a node's Ollama store is a straight copy.
Store facts: blobs/sha256-HEX and manifests/HOST/NAMESPACE/NAME/TAG, as in
Ollama.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from herd.bundle import transfer
from herd.bundle.scan import CONFIG, MANIFEST
from herd.errors import BundleError

HOST = "registry.ollama.ai"
NAMESPACE = "library"
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
NAME_RE = re.compile(rf"^({_PART}):({_PART})\Z")
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})\Z")


def _noop(_: int) -> None:
    return None


def split_name(name: str) -> tuple[str, str]:
    """`model[:tag]` (optionally `library/` prefixed) -> (model, tag), validated."""
    short = name.strip()
    for prefix in (f"{HOST}/{NAMESPACE}/", f"{NAMESPACE}/"):
        if short.startswith(prefix):
            short = short[len(prefix) :]
    if ":" not in short:
        short += ":latest"
    m = NAME_RE.match(short)
    if not m:
        raise BundleError(
            f"{name!r}: not a model name herd can bundle (expected NAME:TAG in the "
            "library namespace; letters, digits, '_', '.', '-')"
        )
    return m.group(1), m.group(2)


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def filename(self) -> str:
        return "sha256-" + self.hex


@dataclass(frozen=True)
class Manifest:
    """An Ollama image manifest; `raw` is kept byte for byte (digest = its sha256)."""

    raw: bytes
    config: Layer | None
    layers: tuple[Layer, ...]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    @property
    def blobs(self) -> tuple[Layer, ...]:
        return self.layers + ((self.config,) if self.config else ())

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.blobs)


def _layer(doc: object, label: str) -> Layer:
    if not isinstance(doc, dict):
        raise BundleError(f"{label}: layer is not an object")
    digest, size, media = doc.get("digest"), doc.get("size"), doc.get("mediaType")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise BundleError(f"{label}: bad digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BundleError(f"{label}: bad size {size!r}")
    if not isinstance(media, str):
        raise BundleError(f"{label}: missing mediaType")
    return Layer(media, digest, size)


def parse_manifest(raw: bytes, label: str) -> Manifest:
    """Parse manifest bytes; refuse anything that is not a v2 image manifest."""
    try:
        doc = json.loads(raw)
    except ValueError as ex:
        raise BundleError(f"{label}: manifest is not JSON: {ex}") from ex
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise BundleError(f"{label}: not an Ollama manifest (schemaVersion 2)")
    if doc.get("mediaType", MANIFEST) != MANIFEST:
        raise BundleError(f"{label}: unknown manifest mediaType {doc['mediaType']!r}")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise BundleError(f"{label}: manifest has no layers")
    config = None
    raw_config = doc.get("config")
    if raw_config is not None:
        config = _layer(raw_config, f"{label}: config")
        if config.media_type != CONFIG:
            raise BundleError(f"{label}: config has media type {config.media_type!r}")
    return Manifest(
        raw,
        config,
        tuple(_layer(x, f"{label}: layers[{i}]") for i, x in enumerate(layers)),
    )


def encode_manifest(config: Layer, layers: list[Layer]) -> bytes:
    """Manifest bytes as Ollama's create writes them (compact JSON + newline)."""

    def obj(layer: Layer) -> dict[str, object]:
        return {
            "mediaType": layer.media_type,
            "digest": layer.digest,
            "size": layer.size,
        }

    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": obj(config),
        "layers": [obj(x) for x in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


class ModelStore:
    """A directory laid out like `$OLLAMA_MODELS` (herd's store or a real one).

    `owner` (uid, gid), when set, is applied to everything written, so a store
    run by the `ollama` user stays writable by it.
    """

    def __init__(self, root: Path, owner: tuple[int, int] | None = None):
        self.root = root
        self.owner = owner

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest.replace(":", "-", 1)

    def manifest_path(self, name: str) -> Path:
        model, tag = split_name(name)
        return self.manifests_dir / HOST / NAMESPACE / model / tag

    def has_blob(
        self, layer: Layer, advance: Callable[[int], None] | None = None
    ) -> bool:
        """The blob is present and its sha256 confirmed (re-read, never by size).

        A file of the right size under a blob's name may be anything (a bad
        disk, a hand copy, an attacker): only its hash makes it that blob.
        """
        return transfer.confirm(
            self.blob_path(layer.digest), layer.size, layer.hex, advance or _noop
        )

    def blob_source(self, layer: Layer) -> transfer.Source:
        """This store's copy of `layer` as something to copy from."""
        return transfer.Source(self.blob_path(layer.digest), layer.size, layer.digest)

    def _mkdir(self, path: Path) -> None:
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o755)
            if self.owner is not None:
                os.chown(d, *self.owner)

    def prepare(self) -> None:
        self._mkdir(self.blobs_dir)
        self._mkdir(self.manifests_dir)

    def read_manifest(self, name: str) -> Manifest | None:
        path = self.manifest_path(name)
        try:
            return parse_manifest(path.read_bytes(), str(path))
        except FileNotFoundError:
            return None

    def write_manifest(self, name: str, raw: bytes) -> None:
        """Atomically (temp file outside manifests/, so Ollama's glob never sees it)."""
        final = self.manifest_path(name)
        self._mkdir(final.parent)
        transfer.write_atomic(final, raw, temp_dir=self.root, owner=self.owner)
        transfer.fsync_dir(final.parent)

    def install_blob(
        self,
        layer: Layer,
        sources: list[transfer.Source],
        *,
        label: str,
        advance: Callable[[int], None] | None = None,
    ) -> None:
        """Copy `sources` (concatenated) in as `layer`, verified; replaces any copy."""
        self._mkdir(self.blobs_dir)
        transfer.copy_verified(
            sources,
            self.blob_path(layer.digest),
            layer.hex,
            label=label,
            advance=advance or _noop,
            owner=self.owner,
        )

    def models(self) -> Iterator[str]:
        """`name:tag` of every model in the library namespace."""
        base = self.manifests_dir / HOST / NAMESPACE
        if not base.is_dir():
            return
        for model_dir in sorted(base.iterdir()):
            if model_dir.is_dir():
                for tag in sorted(model_dir.iterdir()):
                    if tag.is_file() and not tag.name.startswith("."):
                        yield f"{model_dir.name}:{tag.name}"

    def remove_manifest(self, name: str) -> None:
        path = self.manifest_path(name)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only if now empty, like Ollama's pruning

    def referenced(self) -> set[str]:
        """Digests used by any manifest in this store."""
        used: set[str] = set()
        for name in self.models():
            manifest = self.read_manifest(name)
            if manifest:
                used.update(layer.digest for layer in manifest.blobs)
        return used
