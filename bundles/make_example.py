#!/usr/bin/env python3
"""Regenerate bundles/example: a tiny, valid, signed herd bundle (a few KB).

It holds one model, `tiny:latest`: a hand-built GGUF v3 file (llama
architecture, two small F32 tensors), a prompt template and default params,
plus a short scan report. It is signed with the TEST key under
tests/bundle/keys/ (generated here with ssh-keygen if missing; never use it for
real bundles). Tests and the demo import it with
`--trusted-signers tests/bundle/keys/allowed_signers`.

    python bundles/make_example.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from herd.bundle import gguf, signature  # noqa: E402
from herd.bundle.create import GGUFSource, ScanAttestation, create_bundle  # noqa: E402

KEYS = ROOT / "tests" / "bundle" / "keys"
KEY = KEYS / "test_ed25519"
PRINCIPAL = "herd-test@example.invalid"
OUT = ROOT / "bundles" / "example"
CREATED = "2026-11-01T00:00:00Z"

TEMPLATE = (
    "{{ if .System }}<|system|>{{ .System }}\n{{ end }}"
    "<|user|>{{ .Prompt }}\n<|assistant|>"
)
PARAMS = {"stop": ["<|user|>"], "num_ctx": 512, "temperature": 0.2}
REPORT = """\
Example scan report (test data, not a real scan).
tool: herd-example-scanner 1.0
files: 1 GGUF model layer, 1 template, 1 params, 1 config
result: clean
"""


def ensure_test_key() -> None:
    """Create the test key pair and its allowed_signers file if missing."""
    KEYS.mkdir(parents=True, exist_ok=True)
    if not KEY.exists():
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                PRINCIPAL,
                "-f",
                str(KEY),
            ],
            check=True,
        )
    KEY.chmod(0o600)  # git keeps no modes; ssh-keygen refuses a readable key
    pub = (KEYS / "test_ed25519.pub").read_text().split()
    (KEYS / "allowed_signers").write_text(
        f'{PRINCIPAL} namespaces="herd-bundle" {pub[0]} {pub[1]}\n'
    )


def tiny_gguf() -> bytes:
    return gguf.encode(
        {
            "general.architecture": "llama",
            "general.name": "tiny",
            "general.file_type": 0,
            "llama.context_length": 512,
            "llama.embedding_length": 8,
            "tokenizer.ggml.tokens": ["<s>", "</s>", "a", "b"],
        },
        {"token_embd.weight": (8, 4), "output.weight": (8, 4)},
    )


def main() -> None:
    ensure_test_key()
    if OUT.exists():
        shutil.rmtree(OUT)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "tiny.gguf"
        weights.write_bytes(tiny_gguf())
        report = Path(tmp) / "report.txt"
        report.write_text(REPORT)
        create_bundle(
            OUT,
            name="example",
            ggufs=(
                GGUFSource(weights, "tiny:latest", template=TEMPLATE, params=PARAMS),
            ),
            attestation=ScanAttestation(
                report,
                "clean",
                tool="herd-example-scanner",
                version="1.0",
                date=CREATED,
            ),
            created=CREATED,
        )
    signature.sign(OUT, KEY)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
