"""Where import and verify get their rules: trusted signers, scan demand, store.

By default from the applied manifest (`STATE_DIR/current.json`); a fleet.yaml
given with `--manifest` replaces it (a site can import before its first apply)
and `--trusted-signers` overrides just that key. Relative paths resolve against
the manifest's directory. There is deliberately no "unsigned" mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from herd.errors import BundleError
from herd.manifest import load_bytes, load_file
from herd.manifest.model import Bundles
from herd.store import read_pointer

STORE_SUBDIR = "store"


@dataclass(frozen=True)
class Policy:
    trusted_signers: Path
    require_scan: bool
    store: Path
    scan_command: str | None = None
    source: str = ""


def _resolve(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _settings(state_dir: Path, manifest: Path | None) -> tuple[Bundles, Path, str]:
    """The `bundles:` section in force, the directory it resolves against, and why."""
    if manifest is not None:
        return load_file(str(manifest)).bundles, manifest.parent, str(manifest)
    pointer = read_pointer(state_dir)
    if pointer is None:
        return Bundles(), Path.cwd(), "no manifest is applied and"
    fleet = load_bytes(
        pointer.manifest.encode(), f"revision {pointer.revision}", pointer.base_dir
    )
    return fleet.bundles, Path(pointer.base_dir), f"applied revision {pointer.revision}"


def store_path(state_dir: Path, manifest: Path | None = None) -> Path:
    """The bundle store directory (`bundles.store`, default STATE_DIR/store)."""
    bundles, base, _ = _settings(state_dir, manifest)
    return _resolve(base, bundles.store) or state_dir / STORE_SUBDIR


def resolve(
    state_dir: Path,
    *,
    manifest: Path | None = None,
    trusted_signers: Path | None = None,
    require_scan: bool | None = None,
) -> Policy:
    """The bundle policy in force, or a clear refusal when no signer is trusted."""
    bundles, base, source = _settings(state_dir, manifest)
    signers = trusted_signers or _resolve(base, bundles.trusted_signers)
    if signers is None:
        raise BundleError(
            f"no trusted signers: {source} names no bundles.trusted_signers file; "
            "set it in fleet.yaml and apply, or pass --manifest FILE or "
            "--trusted-signers FILE (herd never imports unsigned bundles)"
        )
    return Policy(
        trusted_signers=signers,
        require_scan=bundles.require_scan if require_scan is None else require_scan,
        store=_resolve(base, bundles.store) or state_dir / STORE_SUBDIR,
        scan_command=bundles.scan_command,
        source=source,
    )
