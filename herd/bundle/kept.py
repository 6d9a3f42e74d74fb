"""The signed index a store keeps per imported bundle, so a peer can re-verify it.

A bundle's blobs and manifests live in the store content-addressed; its
signed `bundle.yaml`, `bundle.yaml.sig` and scan report are kept beside them
in `STORE/bundles/NAME/`. With those, another router (`herd bundle import
--from-peer`) can rebuild the bundle's exact tree from this one's registry and
verify it as if it came on the stick: every file the signed index lists is
served here by its bundle path (a split blob's parts are byte ranges of the
stored blob). Nothing served is trusted by the receiver.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from herd.bundle import layout, signature, transfer
from herd.bundle.layout import BundleDoc
from herd.bundle.ollama import ModelStore
from herd.errors import BundleError

KEPT = "bundles"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}\Z")
#: Scan reports kept are at most this large (the verifier reads them whole).
MAX_REPORT = 64 << 20


@dataclass(frozen=True)
class Served:
    """One file of a bundle as the store holds it: `length` bytes at `offset`."""

    path: Path
    offset: int
    length: int


def kept_dir(store_root: Path, name: str) -> Path:
    if not NAME_RE.match(name):
        raise BundleError(f"{name!r} is not a bundle name")
    return Path(store_root) / KEPT / name


def keep(root: Path, doc: BundleDoc, store_root: Path) -> None:
    """Keep the verified index bytes, the signature and the scan report.

    The index is `doc.raw`, the bytes whose signature was checked; the
    signature and the report are read again from the bundle (a receiving peer
    verifies all three again, so a stick that changed meanwhile only makes
    the peer refuse).
    """
    target = kept_dir(store_root, doc.name)
    tmp = target.with_name(f".{doc.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / layout.INDEX).write_bytes(doc.raw)
        (tmp / layout.SIGNATURE).write_bytes(signature.read_signature(root))
        report = doc.scan.report if doc.scan else None
        entry = doc.file(report) if report else None
        if entry is not None:
            data = transfer.read_small(root / entry.path, MAX_REPORT, entry.path)
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise BundleError(
                    f"{entry.path}: sha256 mismatch (corrupted or altered)"
                )
            out = tmp / entry.path
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def forget(store_root: Path, name: str) -> None:
    """Drop what `keep` kept (on `herd bundle rm`)."""
    shutil.rmtree(kept_dir(store_root, name), ignore_errors=True)


def _index(store_root: Path, name: str) -> BundleDoc | None:
    """The kept index, parsed (it was verified at import; receivers verify again)."""
    directory = kept_dir(store_root, name)
    try:
        return layout.parse(layout.read_index_bytes(directory), str(directory))
    except BundleError:
        return None


def locate(store_root: Path, name: str, path: str) -> Served | None:
    """Where the store holds file `path` of bundle `name`, or None.

    Only paths the kept index lists (and the index and signature themselves)
    are served, so nothing outside the bundle is reachable by name.
    """
    directory = kept_dir(store_root, name)
    if path in (layout.INDEX, layout.SIGNATURE):
        return _whole(directory / path)
    doc = _index(store_root, name)
    if doc is None:
        return None
    store = ModelStore(store_root)
    if doc.scan and doc.scan.report == path:
        return _whole(directory / path)
    for model, manifest_path in doc.models.items():
        if manifest_path == path:
            return _whole(store.manifest_path(model))
    for entry in doc.files:
        if not entry.digest:
            continue
        blob = store.blob_path(entry.digest)
        offset = 0
        for stored in entry.stored:
            if stored.path == path:
                return Served(blob, offset, stored.size) if blob.is_file() else None
            offset += stored.size
    return None


def _whole(path: Path) -> Served | None:
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return Served(path, 0, path.stat().st_size)
    except OSError:
        return None
