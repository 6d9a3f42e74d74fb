"""`herd bundle rm`: drop a bundle's models, keeping blobs other models still use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from herd.bundle import kept
from herd.bundle.catalog import Catalog
from herd.bundle.importer import store_lock
from herd.bundle.ollama import ModelStore
from herd.errors import BundleError
from herd.store import Store


@dataclass(frozen=True)
class Removal:
    bundle: str
    models: tuple[str, ...]
    blobs: tuple[str, ...]
    freed: int


def bundle_store(state: Store, name: str, default: Path) -> Path:
    """The store `name` was imported into (recorded), else `default`."""
    row = Catalog(state).bundle(name)
    if row is None:
        raise BundleError(f"no imported bundle named {name!r} (see `herd bundle list`)")
    return Path(row["store"]) if row.get("store") else default


def plan_removal(state: Store, store_root: Path, name: str) -> Removal:
    """What `remove_bundle` would delete (shown before the confirmation)."""
    catalog = Catalog(state)
    if catalog.bundle(name) is None:
        raise BundleError(f"no imported bundle named {name!r} (see `herd bundle list`)")
    store = ModelStore(store_root)
    owned = catalog.models(bundle=name)
    gone = {m.name for m in owned}
    still_used: set[str] = set()
    for other in store.models():
        if other not in gone:
            manifest = store.read_manifest(other)
            if manifest:
                still_used.update(layer.digest for layer in manifest.blobs)
    candidates = sorted({d for m in owned for d in m.blobs} - still_used)
    freed = 0
    for digest in candidates:
        path = store.blob_path(digest)
        if path.exists():
            freed += path.stat().st_size
    return Removal(name, tuple(sorted(gone)), tuple(candidates), freed)


def remove_bundle(state: Store, store_root: Path, name: str) -> Removal:
    """Remove manifests first (models vanish at once), then the unused blobs."""
    with store_lock(store_root):
        plan = plan_removal(state, store_root, name)
        store = ModelStore(store_root)
        for model in plan.models:
            store.remove_manifest(model)
        for digest in plan.blobs:
            store.blob_path(digest).unlink(missing_ok=True)
        Catalog(state).forget(name, list(plan.models), list(plan.blobs))
        kept.forget(store_root, name)
    return plan
