"""`herd bundle create`, on the connected side: pack models into a bundle directory.

Models come from an existing Ollama store (manifests byte for byte, so digests
stay identical everywhere) or from bare GGUF files (config blob + layers built
the way `ollama create` would). Every blob passes herd's content checks (and the
optional external scanner) before it is written; blobs larger than the split
size are cut into parts that fit FAT32, each with its own sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd import __version__
from herd.bundle import layout, scan, transfer
from herd.bundle.gguf import human_number
from herd.bundle.ollama import Layer, ModelStore, encode_manifest, split_name
from herd.errors import BundleError
from herd.store import now_iso

DEFAULT_SPLIT = int(3.9 * (1 << 30))
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int | None:
    """`3.9G`, `500M`, `1048576` (binary units); `0` or `off` means no splitting."""
    if text.strip().lower() in ("0", "off", "none"):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size like 3.9G or 500M")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size < 1 << 20:
        raise ValueError("split size must be at least 1M")
    return size


_P = "application/vnd.ollama.image."


def read_params(value: str | None) -> dict[str, Any] | None:
    """`--params`: an inline JSON object, or a file holding one."""
    if value is None:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        params = json.loads(text)
    except ValueError as ex:
        raise BundleError(
            f"--params: not JSON (a file or an inline object): {ex}"
        ) from ex
    if not isinstance(params, dict):
        raise BundleError("--params must be a JSON object")
    return params


@dataclass(frozen=True)
class GGUFSource:
    """A bare GGUF file and what to wrap it in."""

    path: Path
    name: str
    template: str | None = None
    params: dict[str, Any] | None = None
    system: str | None = None


@dataclass(frozen=True)
class ScanAttestation:
    """The security team's report to attach (None: herd's built-in checks only)."""

    report: Path
    verdict: str
    tool: str = "external"
    version: str = ""
    date: str = ""


class _Writer:
    """Accumulates files into OUT and their entries for bundle.yaml."""

    def __init__(self, out: Path, split_size: int | None, scan_command: str | None):
        self.out = out
        self.split_size = split_size
        self.scan_command = scan_command
        self.files: dict[str, dict[str, Any]] = {}

    def _entry(self, rel: str, size: int, sha: str, parts: list | None = None) -> None:
        entry: dict[str, Any] = {"path": rel, "size": size, "sha256": sha}
        if parts:
            entry["parts"] = parts
        self.files[rel] = entry

    def add_bytes(self, rel: str, data: bytes) -> str:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        transfer.write_atomic(path, data)
        sha = hashlib.sha256(data).hexdigest()
        self._entry(rel, len(data), sha)
        return sha

    def blob_bytes(self, data: bytes, media_type: str) -> Layer:
        sha = hashlib.sha256(data).hexdigest()
        rel = f"blobs/sha256-{sha}"
        if rel not in self.files:
            tmp = transfer.temp_path(self.out / "blobs")
            tmp.write_bytes(data)
            try:
                scan.check_blob(tmp, media_type, f"{media_type} layer")
            finally:
                tmp.unlink()
            self.add_bytes(rel, data)
        return Layer(media_type, "sha256:" + sha, len(data))

    def blob_file(self, src: Path, media_type: str, expected: str | None) -> Layer:
        """Copy `src` in (split if large), hashing in the same pass."""
        label = str(src)
        # The user named this file on the connected side: a link to it (a
        # Hugging Face cache entry, say) is fine; the checks refuse links.
        src = Path(os.path.realpath(src))
        scan.check_blob(src, media_type, label)
        scan.run_scan_command(self.scan_command, src, label)
        if expected and f"blobs/sha256-{expected}" in self.files:
            return Layer(media_type, "sha256:" + expected, src.stat().st_size)
        size = src.stat().st_size
        step = self.split_size if self.split_size and size > self.split_size else size
        whole = hashlib.sha256()
        temps: list[tuple[Path, int, str]] = []
        buf = bytearray(transfer.CHUNK)
        view = memoryview(buf)
        with open(src, "rb", buffering=0) as fh:
            left = size
            while left > 0 or not temps:
                tmp = transfer.temp_path(self.out / "blobs")
                part = hashlib.sha256()
                want = min(step, left)
                with open(tmp, "wb", buffering=0) as dst:
                    got = 0
                    while got < want:
                        n = fh.readinto(view[: min(len(buf), want - got)])
                        if not n:
                            raise BundleError(f"{src}: file shrank while copying")
                        whole.update(view[:n])
                        part.update(view[:n])
                        dst.write(view[:n])
                        got += n
                    os.fsync(dst.fileno())
                temps.append((tmp, want, part.hexdigest()))
                left -= want
        sha = whole.hexdigest()
        if expected and sha != expected:
            for tmp, _, _ in temps:
                tmp.unlink()
            raise BundleError(f"{src}: sha256 is {sha}, its name says {expected}")
        rel = f"blobs/sha256-{sha}"
        if len(temps) == 1:
            os.replace(temps[0][0], self.out / rel)
            self._entry(rel, size, sha)
        else:
            parts = []
            for i, (tmp, n, psha) in enumerate(temps):
                os.replace(tmp, self.out / f"{rel}.part{i:03d}")
                parts.append({"path": f"{rel}.part{i:03d}", "size": n, "sha256": psha})
            self._entry(rel, size, sha, parts)
        return Layer(media_type, "sha256:" + sha, size)


def _config_blob(info: Any) -> bytes:
    arch = info.architecture
    doc = {
        "model_format": "gguf",
        "model_family": arch,
        "model_families": [arch] if arch else [],
        "model_type": human_number(info.parameter_count),
        "file_type": info.file_type,
        "architecture": "amd64",
        "os": "linux",
    }
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _from_ollama(w: _Writer, source: ModelStore, name: str) -> tuple[str, bytes]:
    model, tag = split_name(name)
    manifest = source.read_manifest(name)
    if manifest is None:
        raise BundleError(f"{name}: not in {source.root} (no manifest)")
    for layer in manifest.blobs:
        path = source.blob_path(layer.digest)
        if not path.is_file() or path.stat().st_size != layer.size:
            raise BundleError(
                f"{name}: blob {layer.digest} missing or wrong size in {path}"
            )
        w.blob_file(path, layer.media_type, layer.hex)
    return f"{model}:{tag}", manifest.raw


def _from_gguf(w: _Writer, src: GGUFSource) -> tuple[str, bytes]:
    model, tag = split_name(src.name)
    info = scan.check_weights_file(src.path)
    kind = info.metadata.get("general.type")
    if kind in ("adapter", "projector", "mmproj"):
        raise BundleError(
            f"{src.path}: GGUF of type {kind!r}, not a model; --from-gguf wraps "
            "base models only (create the model with Ollama, then bundle it with "
            "--from-ollama)"
        )
    layers = [w.blob_file(src.path, _P + "model", None)]
    if src.template is not None:
        layers.append(w.blob_bytes(src.template.encode(), _P + "template"))
    if src.system is not None:
        layers.append(w.blob_bytes(src.system.encode(), _P + "system"))
    if src.params is not None:
        params = json.dumps(src.params, separators=(",", ":")).encode()
        layers.append(w.blob_bytes(params, _P + "params"))
    config = w.blob_bytes(_config_blob(info), scan.CONFIG)
    return f"{model}:{tag}", encode_manifest(config, layers)


def _write_bundle(
    out: Path,
    bundle_name: str,
    *,
    source_store: Path | None,
    ollama_models: tuple[str, ...],
    ggufs: tuple[GGUFSource, ...],
    split_size: int | None,
    attestation: ScanAttestation | None,
    scan_command: str | None,
    created: str | None,
) -> None:
    w = _Writer(out, split_size, scan_command)
    (out / "blobs").mkdir(parents=True, exist_ok=True)
    manifests: dict[str, bytes] = {}
    source = ModelStore(source_store) if source_store else None
    for model_name in ollama_models:
        key, raw = _from_ollama(w, source, model_name)  # type: ignore[arg-type]
        manifests[key] = raw
    for g in ggufs:
        key, raw = _from_gguf(w, g)
        manifests[key] = raw
    models = {}
    for key, raw in manifests.items():
        model, tag = key.split(":", 1)
        rel = f"manifests/{model}/{tag}"
        w.add_bytes(rel, raw)
        models[key] = rel
    doc: dict[str, Any] = {
        "format": layout.FORMAT,
        "name": bundle_name,
        "created": created or now_iso(),
        "created_by": f"herd {__version__}",
        "models": models,
    }
    if attestation is not None:
        rel = f"scan/{attestation.report.name}"
        w.add_bytes(rel, attestation.report.read_bytes())
        scan_doc = {
            "tool": attestation.tool,
            "version": attestation.version,
            "date": attestation.date or now_iso(),
            "verdict": attestation.verdict,
            "report": rel,
        }
    else:
        scan_doc = {
            "tool": "herd-builtin",
            "version": __version__,
            "date": created or now_iso(),
            "verdict": "clean",
            "report": None,
        }
    scan_doc["builtin"] = "passed" + (
        f"; {scan_command}: passed" if scan_command else ""
    )
    doc["files"] = [w.files[k] for k in sorted(w.files)]
    doc["scan"] = scan_doc
    data = layout.dump(doc)
    layout.parse(data)  # never write a bundle.yaml herd itself would refuse
    transfer.write_atomic(out / layout.INDEX, data)


def create_bundle(
    out: Path,
    *,
    name: str | None = None,
    ollama_store: Path | None = None,
    ollama_models: tuple[str, ...] = (),
    ggufs: tuple[GGUFSource, ...] = (),
    split_size: int | None = DEFAULT_SPLIT,
    attestation: ScanAttestation | None = None,
    scan_command: str | None = None,
    created: str | None = None,
) -> Path:
    """Write a complete, unsigned bundle into the new directory `out`."""
    if not ollama_models and not ggufs:
        raise BundleError("nothing to bundle: give MODEL:TAG names or --from-gguf")
    if ollama_models and ollama_store is None:
        raise BundleError("model names need --from-ollama DIR (an Ollama models dir)")
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out}: exists and is not empty")
    fresh = not out.exists()
    try:
        _write_bundle(
            out,
            name or out.name,
            source_store=ollama_store,
            ollama_models=ollama_models,
            ggufs=ggufs,
            split_size=split_size,
            attestation=attestation,
            scan_command=scan_command,
            created=created,
        )
    except BaseException:
        # Never leave a half-written bundle behind.
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        elif out.is_dir():
            for child in out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    return out
