"""Wheels from installed distributions: `herd wheelhouse --from-installed`.

An installed distribution is its files plus a RECORD naming each with its
sha256, and a WHEEL file with its tags; `pack_installed` puts the same files
back into a wheel of the same name and tags, after checking every file against
RECORD (an install edited since is refused, naming the file). Console scripts
are left out (pip writes them again from entry_points.txt); files installed
outside site-packages go to the wheel's .data directory. Packing is
deterministic: the same install always gives the same bytes, so the same pins.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from herd.errors import HerdError

#: Installer artefacts that are not part of a distribution's wheel.
_INSTALLER_FILES = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


class WheelhouseError(HerdError):
    """A wheelhouse that cannot be built or does not verify."""


def runtime_closure(root: str) -> list[metadata.Distribution]:
    """The installed distribution `root` and everything it needs here (no extras)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as ex:
            raise WheelhouseError(f"{name} is required but not installed") from ex
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _record_hash(file: metadata.PackagePath) -> str | None:
    """The sha256 (hex) RECORD holds for an installed file, if any."""
    if file.hash is None or file.hash.mode != "sha256":
        return None
    value = file.hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _add(whl: zipfile.ZipFile, arc: str, data: bytes, mode: int) -> None:
    """One member with a fixed date: the same install packs to the same bytes."""
    info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    whl.writestr(info, data)


def pack_installed(dist: metadata.Distribution, out_dir: Path) -> Path:
    """Pack an installed distribution back into its wheel (same tags).

    Deterministic: packing the same installed files twice gives the same bytes,
    so the same install always yields the same pins."""
    name = dist.metadata["Name"]
    version = dist.version
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = re.findall(r"^Tag: (\S+)$", wheel_meta, re.M)
    if not tags or not dist.files:
        raise WheelhouseError(
            f"{name} {version}: not installed from a wheel (no WHEEL tags or RECORD); "
            "build the wheelhouse with pip instead (drop --from-installed)"
        )
    site = Path(dist.locate_file("")).resolve()
    prefix = Path(sysconfig.get_paths()["data"]).resolve()
    scripts = {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    data_dir = f"{stem}.data"
    record_rows: list[tuple[str, str, str]] = []
    pyver = ".".join(sorted({t.split("-")[0] for t in tags}))
    abi = ".".join(sorted({t.split("-")[1] for t in tags}))
    plat = ".".join(sorted({t.split("-")[2] for t in tags}))
    target = out_dir / f"{stem}-{pyver}-{abi}-{plat}.whl"
    dist_info: str | None = None
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as whl:
        for file in dist.files:
            rel = str(file)
            parts = Path(rel).parts
            if "__pycache__" in parts or rel.endswith(".pyc"):
                continue
            if parts[0].endswith(".dist-info") and parts[-1] in _INSTALLER_FILES:
                dist_info = parts[0]
                continue
            path = (site / rel).resolve()
            data = path.read_bytes()
            expected = _record_hash(file)
            if expected and hashlib.sha256(data).hexdigest() != expected:
                raise WheelhouseError(
                    f"{name} {version}: {rel} changed since it was installed "
                    "(its sha256 no longer matches RECORD); reinstall it"
                )
            if not rel.startswith(".."):
                arc = rel
            elif path.is_relative_to(prefix / "bin"):
                if path.name in scripts:
                    continue  # pip writes console scripts from entry_points.txt
                arc = f"{data_dir}/scripts/{path.name}"
                data = re.sub(rb"^#!.*python\S*", b"#!python", data, count=1)
            elif path.is_relative_to(prefix):
                arc = f"{data_dir}/data/{path.relative_to(prefix)}"
            else:
                raise WheelhouseError(f"{name}: {rel} lies outside {prefix}")
            _add(whl, arc, data, 0o755 if path.stat().st_mode & 0o111 else 0o644)
            record_rows.append(
                (arc, f"sha256={_b64(hashlib.sha256(data).digest())}", str(len(data)))
            )
        if dist_info is None:
            raise WheelhouseError(f"{name} {version}: no .dist-info in its RECORD")
        record = io.StringIO()
        writer = csv.writer(record, lineterminator="\n")
        writer.writerows(record_rows)
        writer.writerow((f"{dist_info}/RECORD", "", ""))
        _add(whl, f"{dist_info}/RECORD", record.getvalue().encode(), 0o644)
    return target
