"""Building (and forging) bundles for the tests: real files, real ssh-keygen."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from herd.bundle import gguf, layout, signature
from herd.bundle.create import GGUFSource, ScanAttestation, create_bundle
from herd.bundle.ollama import Layer, encode_manifest, parse_manifest

ROOT = Path(__file__).resolve().parents[2]
KEYS = Path(__file__).resolve().parent / "keys"
TEST_KEY = KEYS / "test_ed25519"
ALLOWED = KEYS / "allowed_signers"
PRINCIPAL = "herd-test@example.invalid"
EXAMPLE = ROOT / "bundles" / "example"
MODEL = "application/vnd.ollama.image.model"


def tiny_gguf(arch: str = "llama", width: int = 8, seed: int = 0) -> bytes:
    return gguf.encode(
        {
            "general.architecture": arch,
            "general.file_type": 1,
            "general.name": f"t{seed}",
        },
        {"token_embd.weight": (width, 4), "output.weight": (width, 4 + seed)},
    )


def big_gguf(path: Path, size: int) -> Path:
    """A valid GGUF of about `size` bytes: header + one big tensor, mostly sparse."""
    header = gguf.encode_header({"general.architecture": "llama"}, {"w": (size // 4,)})
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(os.urandom(1 << 16))  # some real bytes; the rest is a hole
        fh.truncate(len(header) + (size // 4) * 4)
    return path


def make_bundle(
    out: Path,
    *,
    name: str = "b1",
    model: str = "tiny:latest",
    weights: bytes | Path | None = None,
    template: str | None = "{{ .Prompt }}",
    params: dict[str, Any] | None = None,
    split_size: int | None = None,
    verdict: str | None = "clean",
    sign_with: Path | None = TEST_KEY,
) -> Path:
    """A bundle built with the real create path, scanned 'clean' and signed."""
    src = out.parent / f".{out.name}-src"
    src.mkdir(parents=True, exist_ok=True)
    if isinstance(weights, Path):
        wpath = weights
    else:
        wpath = src / "model.gguf"
        wpath.write_bytes(weights if weights is not None else tiny_gguf())
    attestation = None
    if verdict is not None:
        report = src / "report.txt"
        report.write_text(f"scan result: {verdict}\n")
        attestation = ScanAttestation(report, verdict, tool="testscan", version="1")
    create_bundle(
        out,
        name=name,
        ggufs=(
            GGUFSource(wpath, model, template=template, params=params or {"top_k": 5}),
        ),
        split_size=split_size,
        attestation=attestation,
    )
    if sign_with is not None:
        signature.sign(out, sign_with)
    return out


def read_doc(bundle: Path) -> dict[str, Any]:
    return yaml.safe_load((bundle / layout.INDEX).read_bytes())


def write_doc(bundle: Path, doc: dict[str, Any], sign: bool = True) -> None:
    (bundle / layout.INDEX).write_bytes(layout.dump(doc))
    if sign:
        signature.sign(bundle, TEST_KEY)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def swap_model_layer(bundle: Path, data: bytes, media_type: str = MODEL) -> None:
    """Swap in `data` as the model layer; manifest and bundle.yaml follow, re-signed."""
    doc = read_doc(bundle)
    model, rel = next(iter(doc["models"].items()))
    manifest = parse_manifest((bundle / rel).read_bytes(), rel)
    old = next(layer for layer in manifest.layers if layer.media_type == MODEL)
    new = Layer(media_type, "sha256:" + sha(data), len(data))
    (bundle / "blobs" / old.filename).unlink()
    (bundle / "blobs" / new.filename).write_bytes(data)
    layers = [new if layer == old else layer for layer in manifest.layers]
    raw = encode_manifest(manifest.config, layers)
    (bundle / rel).write_bytes(raw)
    files = [f for f in doc["files"] if f["path"] != f"blobs/{old.filename}"]
    for f in files:
        if f["path"] == rel:
            f.update(size=len(raw), sha256=sha(raw))
    files.append(
        {"path": f"blobs/{new.filename}", "size": len(data), "sha256": sha(data)}
    )
    doc["files"] = sorted(files, key=lambda f: f["path"])
    write_doc(bundle, doc)


def store_files(store: Path) -> list[str]:
    """Every regular file in a store except the lock (what 'untouched' means)."""
    if not store.exists():
        return []
    return sorted(
        str(p.relative_to(store))
        for p in store.rglob("*")
        if p.is_file() and p.name != ".lock"
    )


def verify_store_blobs(store: Path) -> int:
    """Every blob in the store hashes to its name; returns how many."""
    count = 0
    for blob in (store / "blobs").iterdir():
        assert blob.name.startswith("sha256-"), blob
        h = hashlib.sha256()
        with open(blob, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
        assert h.hexdigest() == blob.name[7:], f"{blob} does not match its name"
        count += 1
    return count


def other_key(tmp: Path) -> Path:
    key = tmp / "other_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
        )
    return key


def manifest_json(bundle: Path) -> dict[str, Any]:
    rel = next(iter(read_doc(bundle)["models"].values()))
    return json.loads((bundle / rel).read_bytes())
