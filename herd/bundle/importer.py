"""`herd bundle import`: from the stick into the content-addressed store.

Order of events, each step refusing with the store untouched:
check (signature, tree, manifests, scan policy) -> model names that collide
case-insensitively with the store's -> free space -> copy every missing blob
into `STORE/.staging/NAME/` hashing in the same pass (parts are reassembled on
the fly) -> content checks on the staged file -> only when all blobs are good,
rename them into `STORE/blobs/` -> manifests last -> catalog.

A blob already in the store (or staged by an interrupted run) counts only once
its sha256 is confirmed by reading it again; a file of the right size with the
wrong content is replaced. Such blobs are not copied again, but their copy on
the stick is still hashed and checked exactly as `herd bundle verify` does, so
import and verify always give the same verdict on the same bundle. Staged blobs
survive a crash (`kill -9`), so a re-run resumes; a re-run is idempotent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from herd.bundle import kept, scan, transfer
from herd.bundle.catalog import Catalog
from herd.bundle.ollama import ModelStore
from herd.bundle.policy import Policy
from herd.bundle.progress import human_bytes
from herd.bundle.verify import BundleBlob, Checked, check, verify_blob
from herd.errors import BundleError
from herd.store import Store, sha256_hex

STAGING = ".staging"
LOCK = ".lock"
#: Free space kept in reserve beyond the bytes to copy.
SPACE_MARGIN = 16 << 20

Advance = Callable[[int], None]


@dataclass(frozen=True)
class ImportResult:
    bundle: str
    signer: str
    store: str
    models: tuple[str, ...]
    copied: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    bytes_to_copy: int = 0
    dry_run: bool = False
    ollama_models: str | None = None
    installed: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """One import or removal at a time per store."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as ex:
            raise BundleError(f"{root}: another import or removal is running") from ex
        yield


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _sized(path: Path, size: int) -> bool:
    """Cheap pre-check (the hash decides): a file of this size is at `path`."""
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _which_part(checked: Checked, blob: BundleBlob) -> str:
    """After a whole-blob mismatch, name the damaged part (failure path only)."""
    for i, (part, src) in enumerate(
        zip(blob.entry.parts, blob.sources(checked.root), strict=True)
    ):
        got, _ = transfer.hash_files([src])
        if got != part.sha256:
            return f"{part.path}: sha256 mismatch in part {i} of {blob.entry.path}"
    return f"{blob.entry.path}: sha256 mismatch"


def _stage(
    checked: Checked,
    blob: BundleBlob,
    staging: Path,
    policy: Policy,
    advance: Advance,
    staged: bool,
) -> None:
    """Copy+hash one blob into staging (unless `staged`, confirmed), then scan it.

    A blob staged by an interrupted run is not copied again, but the stick's
    copy is still verified, as `herd bundle verify` would.
    """
    target = staging / blob.layer.filename
    if staged:
        verify_blob(checked, blob, None, advance)
    else:
        try:
            transfer.copy_verified(
                blob.sources(checked.root),
                target,
                blob.layer.hex,
                label=blob.entry.path,
                advance=advance,
            )
        except BundleError as ex:
            if blob.entry.parts and "sha256 mismatch" in str(ex):
                raise BundleError(
                    _which_part(checked, blob) + " (corrupted or altered)"
                ) from ex
            raise
    try:
        scan.check_blob(target, blob.layer.media_type, blob.entry.path)
        scan.run_scan_command(policy.scan_command, target, blob.entry.path)
    except BundleError:
        target.unlink(missing_ok=True)
        raise


def _drop_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()


def _clean_temps(directory: Path) -> None:
    if directory.is_dir():
        for leftover in directory.glob(transfer.TEMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)


def import_bundle(
    root: Path,
    policy: Policy,
    state: Store,
    *,
    dry_run: bool = False,
    ollama_models: Path | None = None,
    progress: Callable[[int], Advance] | None = None,
) -> ImportResult:
    """Import the bundle at `root`; every refusal is audited and leaves no trace."""
    try:
        return _import(root, policy, state, dry_run, ollama_models, progress)
    except BundleError as ex:
        state.audit("bundle.refused", {"source": str(root), "reason": str(ex)})
        raise
    except OSError as ex:
        # An unreadable stick, a read-only store...: one clear line, audited.
        # Staged blobs are kept, so the next run resumes.
        reason = f"{ex.filename or root}: {ex.strerror or ex}"
        state.audit("bundle.refused", {"source": str(root), "reason": reason})
        raise BundleError(reason) from ex


def check_case_collisions(
    names: Iterable[str], existing: Iterable[str], where: str
) -> None:
    """Refuse a model name that differs only in case from one already there.

    Ollama resolves names case-insensitively: `TINY:latest` next to
    `tiny:latest` would make which model a node runs a matter of chance.
    """
    known = {e.lower(): e for e in existing}
    for name in names:
        other = known.get(name.lower())
        if other is not None and other != name:
            raise BundleError(
                f"{name}: collides with {other} in {where}: model names are "
                f"case-insensitive (remove {other} first, or rename the model)"
            )


def _import(
    root: Path,
    policy: Policy,
    state: Store,
    dry_run: bool,
    ollama_models: Path | None,
    progress: Callable[[int], Advance] | None,
) -> ImportResult:
    checked = check(root, policy)
    doc = checked.doc
    store = ModelStore(policy.store)
    names = [m.name for m in checked.models]
    check_case_collisions(names, store.models(), str(policy.store))
    check_case_collisions(
        names, (m.name for m in Catalog(state).models()), "the bundle catalog"
    )
    staging = policy.store / STAGING / doc.name
    blobs = checked.blobs
    in_store = [
        b for b in blobs if _sized(store.blob_path(b.layer.digest), b.layer.size)
    ]
    in_staging = [b for b in blobs if _sized(staging / b.layer.filename, b.layer.size)]
    # One bar: confirming what is already there, then reading the whole stick.
    total = sum(b.layer.size for b in [*in_store, *in_staging])
    total += 0 if dry_run else checked.blob_bytes
    advance = progress(total) if progress else (lambda _: None)
    present = [b for b in in_store if store.has_blob(b.layer, advance)]
    missing = [b for b in blobs if b not in present]
    staged = {
        b.layer.digest
        for b in in_staging
        if b in missing
        and transfer.confirm(
            staging / b.layer.filename, b.layer.size, b.layer.hex, advance
        )
    }
    to_copy = [b for b in missing if b.layer.digest not in staged]
    need = sum(b.layer.size for b in to_copy)
    result = ImportResult(
        bundle=doc.name,
        signer=checked.signer,
        store=str(policy.store),
        models=tuple(names),
        copied=tuple(b.layer.digest for b in missing),
        skipped=tuple(b.layer.digest for b in present),
        bytes_to_copy=need,
        dry_run=dry_run,
        ollama_models=str(ollama_models) if ollama_models else None,
    )
    if dry_run:
        return result
    free = _free_bytes(policy.store)
    if need + SPACE_MARGIN > free:
        raise BundleError(
            f"{policy.store}: not enough space: {human_bytes(need)} to copy, "
            f"{human_bytes(free)} free (keeping {human_bytes(SPACE_MARGIN)} spare)"
        )
    with store_lock(policy.store):
        if missing:
            staging.mkdir(parents=True, exist_ok=True)
            _clean_temps(staging)
        try:
            for blob in missing:
                _stage(
                    checked,
                    blob,
                    staging,
                    policy,
                    advance,
                    blob.layer.digest in staged,
                )
            # Not copied, but checked on the stick exactly as `verify` does.
            for blob in present:
                verify_blob(checked, blob, policy.scan_command, advance)
            # The signed index too, so a peer router can import it from here.
            kept.keep(checked.root, doc, policy.store)
        except BundleError:
            _drop_staging(staging)
            raise
        except OSError as ex:
            if ex.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _drop_staging(staging)
            raise BundleError(
                f"{policy.store}: disk full while copying ({ex.strerror}); nothing "
                "was imported, free space and run the import again"
            ) from ex
        store.prepare()
        for blob in missing:
            os.replace(
                staging / blob.layer.filename, store.blob_path(blob.layer.digest)
            )
        if missing:
            transfer.fsync_dir(store.blobs_dir)
        for model in checked.models:
            store.write_manifest(model.name, model.manifest.raw)
        _record(checked, state, policy.store)
        _drop_staging(staging)
    if ollama_models is not None:
        installed = install_into_ollama(checked, store, ollama_models, state)
        result = ImportResult(**{**result.as_dict(), "installed": installed})
    return result


def _record(checked: Checked, state: Store, store: Path) -> None:
    doc = checked.doc
    scan_info = doc.scan
    Catalog(state).record_import(
        {
            "name": doc.name,
            "sha256": sha256_hex(doc.raw),
            "created": doc.created,
            "signer": checked.signer,
            "scan_tool": scan_info.tool if scan_info else "",
            "scan_verdict": scan_info.verdict if scan_info else "none",
            "scan_report": scan_info.report or "" if scan_info else "",
            "source": str(checked.root),
            "size": checked.blob_bytes,
            "store": str(store),
        },
        [
            (
                m.name,
                m.manifest.digest,
                m.manifest.size,
                [layer.digest for layer in m.manifest.blobs],
            )
            for m in checked.models
        ],
        [(b.layer.digest, b.layer.size, b.layer.media_type) for b in checked.blobs],
    )


def install_into_ollama(
    checked: Checked, store: ModelStore, models_dir: Path, state: Store
) -> tuple[str, ...]:
    """Copy the bundle's models into a local Ollama store: blobs, then manifests.

    Files get fresh mtimes (Ollama prunes unreferenced blobs older than an hour)
    and the owner of the store directory, so `ollama serve` can manage them.
    """
    if not models_dir.is_dir():
        raise BundleError(f"{models_dir}: no such Ollama models directory")
    st = models_dir.stat()
    target = ModelStore(models_dir, owner=(st.st_uid, st.st_gid))
    check_case_collisions(
        (m.name for m in checked.models), target.models(), str(models_dir)
    )
    missing = [b for b in checked.blobs if not target.has_blob(b.layer)]
    need = sum(b.layer.size for b in missing)
    free = _free_bytes(models_dir)
    if need + SPACE_MARGIN > free:
        raise BundleError(
            f"{models_dir}: not enough space for the Ollama store: "
            f"{human_bytes(need)} to copy, {human_bytes(free)} free"
        )
    target.prepare()
    _clean_temps(target.blobs_dir)
    for blob in missing:
        target.install_blob(
            blob.layer, [store.blob_source(blob.layer)], label=blob.entry.path
        )
    transfer.fsync_dir(target.blobs_dir)
    for model in checked.models:
        target.write_manifest(model.name, model.manifest.raw)
    names = tuple(m.name for m in checked.models)
    state.audit(
        "bundle.install",
        {"bundle": checked.doc.name, "ollama_models": str(models_dir), "models": names},
    )
    return names
