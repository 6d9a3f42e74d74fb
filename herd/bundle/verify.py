"""Checking a bundle on the stick, writing nothing.

`check` does everything that needs no bulk reading: bundle.yaml and its
signature read once each, the signature checked over those bytes, then (only
then) those same bytes parsed; schema, tree
(paths, sizes, nothing extra or missing), the small files (manifests, scan
report) hashed, every manifest layer present in the bundle with a known media
type, and the scan policy. `verify` adds a full read of every blob: sha256 of
each part and of the whole, and the content checks of herd.bundle.scan.
Import runs `check` and then hashes while it copies (one read).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from herd.bundle import layout, scan, signature
from herd.bundle.layout import BundleDoc, FileEntry
from herd.bundle.ollama import Layer, Manifest, parse_manifest, split_name
from herd.bundle.policy import Policy
from herd.bundle.transfer import Advance, Source, hash_files, read_small
from herd.errors import BundleError


@dataclass(frozen=True)
class BundleModel:
    name: str
    manifest: Manifest


@dataclass(frozen=True)
class BundleBlob:
    layer: Layer
    entry: FileEntry

    def sources(self, root: Path) -> list[Source]:
        """The files on the stick, each with its declared size (read no further)."""
        return [Source(root / p.path, p.size, p.path) for p in self.entry.stored]


@dataclass(frozen=True)
class Checked:
    """A bundle that passed `check`: who signed it and what it holds."""

    root: Path
    doc: BundleDoc
    signer: str
    models: tuple[BundleModel, ...]
    blobs: tuple[BundleBlob, ...]

    @property
    def blob_bytes(self) -> int:
        return sum(b.layer.size for b in self.blobs)


#: Manifests and scan reports are read whole; they are small.
MAX_SMALL_FILE = 64 << 20


def _read_small(root: Path, entry: FileEntry) -> bytes:
    data = read_small(root / entry.path, MAX_SMALL_FILE, entry.path)
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise BundleError(f"{entry.path}: sha256 mismatch (corrupted or altered)")
    return data


def check_scan_policy(doc: BundleDoc, policy: Policy) -> None:
    if not policy.require_scan:
        return
    s = doc.scan
    if s is None or not s.report:
        raise BundleError(
            f"bundle {doc.name}: bundles.require_scan is set but the bundle carries "
            "no scan report (create it with --scan-report)"
        )
    if s.verdict != "clean":
        raise BundleError(
            f"bundle {doc.name}: scan verdict is {s.verdict!r} from {s.tool}, not "
            "'clean'; refused (bundles.require_scan)"
        )


def read_signed(root: Path, policy: Policy) -> tuple[layout.BundleDoc, str]:
    """bundle.yaml and its signature, each read once; verified, then parsed.

    The bytes ssh-keygen checks are the bytes parsed: a stick whose content
    changes between reads cannot slip unsigned content past the signature,
    and nothing is parsed (no YAML, no schema) before the signature holds.
    """
    raw = layout.read_index_bytes(root)
    sig = signature.read_signature(root)
    signer = signature.verify(
        raw, sig, policy.trusted_signers, str(root / layout.SIGNATURE)
    )
    return layout.parse(raw, str(root / layout.INDEX)), signer


def check(root: Path, policy: Policy) -> Checked:
    """Everything but the bulk hashing; raises `BundleError` with the reason."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory")
    doc, signer = read_signed(root, policy)
    layout.check_tree(root, doc)
    if doc.scan and doc.scan.report:
        entry = doc.file(doc.scan.report)
        if entry is not None:
            _read_small(root, entry)
    models, blobs, used = [], {}, set()
    for name, path in doc.models.items():
        split_name(name)
        entry = doc.file(path)
        if entry is None or entry.parts:
            raise BundleError(f"{path}: manifest missing from files, or split")
        manifest = parse_manifest(_read_small(root, entry), path)
        for layer in manifest.blobs:
            if layer.media_type not in scan.KNOWN_TYPES:
                raise BundleError(
                    f"{path}: refused: layer {layer.digest[:19]} has unknown media "
                    f"type {layer.media_type!r}"
                )
            blob = doc.blob(layer.digest)
            if blob is None:
                raise BundleError(f"{path}: layer {layer.digest} is not in the bundle")
            if blob.size != layer.size:
                raise BundleError(
                    f"{blob.path}: manifest {path} says {layer.size} bytes, "
                    f"bundle.yaml says {blob.size}"
                )
            known = blobs.get(layer.digest)
            if known and known.layer.media_type != layer.media_type:
                raise BundleError(f"{blob.path}: used with two different media types")
            blobs[layer.digest] = BundleBlob(layer, blob)
            used.add(blob.path)
        models.append(BundleModel(name, manifest))
    for entry in doc.files:
        if entry.digest and entry.path not in used:
            raise BundleError(f"{entry.path}: blob not used by any model of the bundle")
    check_scan_policy(doc, policy)
    return Checked(root, doc, signer, tuple(models), tuple(blobs.values()))


def verify_blob(
    checked: Checked, blob: BundleBlob, scan_command: str | None, advance: Advance
) -> None:
    """Hash every part and the whole of one blob, then check its contents."""
    entry = blob.entry
    whole, parts = hash_files(blob.sources(checked.root), advance)
    for i, (part, got) in enumerate(zip(entry.parts, parts, strict=False)):
        if got != part.sha256:
            raise BundleError(
                f"{part.path}: sha256 mismatch in part {i} of {entry.path} "
                "(corrupted or altered)"
            )
    if whole != entry.sha256:
        raise BundleError(f"{entry.path}: sha256 mismatch (corrupted or altered)")
    first = checked.root / entry.stored[0].path
    scan.check_blob(first, blob.layer.media_type, entry.path)
    for part in entry.stored:
        scan.run_scan_command(scan_command, checked.root / part.path, part.path)


def verify(
    root: Path,
    policy: Policy,
    progress: Callable[[int], Advance] | None = None,
) -> Checked:
    """Full verification of a bundle directory, read-only.

    `progress(total_bytes)` returns the callback fed with bytes as they are hashed.
    """
    checked = check(root, policy)
    advance = progress(checked.blob_bytes) if progress else (lambda _: None)
    for blob in checked.blobs:
        verify_blob(checked, blob, policy.scan_command, advance)
    return checked
