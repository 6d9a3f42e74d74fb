#!/usr/bin/env python3
"""Benchmark: `herd bundle import` of a 2 GiB split bundle vs sha256sum and cp.

Builds a signed bundle holding one ~2 GiB GGUF model split into parts, then in
the same run, over the same part files (page cache warm for all three):

  sha256sum  parts      one read + hash (coreutils)
  cp         parts      one read + write, no hash, no fsync
  herd bundle import    read + hash + write + fsync + rename (one pass)

Target: import <= 1.2x the sha256sum time. Prints ratios, asserts nothing
about wall-clock time. Run from the repo root:

    python tests/bench/bench_import.py [--size-mib 2048] [--split 512M] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from herd.bundle import gguf, signature  # noqa: E402
from herd.bundle.create import (  # noqa: E402
    GGUFSource,
    ScanAttestation,
    create_bundle,
    parse_size,
)
from tests.bundle.bundle_helpers import ALLOWED, TEST_KEY  # noqa: E402

MIB = 1 << 20


def make_weights(path: Path, size: int) -> None:
    """A valid GGUF of `size` bytes with real (non-sparse) incompressible data."""
    header = gguf.encode_header({"general.architecture": "llama"}, {"w": (size // 4,)})
    block = os.urandom(64 * MIB)
    with open(path, "wb") as fh:
        fh.write(header)
        left = (size // 4) * 4
        while left > 0:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n


def timed(argv: list[str], **kw) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--split", default="512M")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="herd-bench-", dir=args.dir))
    try:
        src = work / "src"
        src.mkdir()
        weights = src / "big.gguf"
        print(f"building a {args.size_mib} MiB model in {work} ...", flush=True)
        make_weights(weights, args.size_mib * MIB)
        report = src / "report.txt"
        report.write_text("clean\n")
        bundle = create_bundle(
            work / "bundle",
            name="bench",
            ggufs=(GGUFSource(weights, "bench:latest", template="{{ .Prompt }}"),),
            split_size=parse_size(args.split),
            attestation=ScanAttestation(report, "clean"),
        )
        weights.unlink()
        TEST_KEY.chmod(0o600)  # git keeps no modes; ssh-keygen wants 0600
        signature.sign(bundle, TEST_KEY)
        parts = sorted(str(p) for p in (bundle / "blobs").glob("*.part*"))
        total = sum(os.path.getsize(p) for p in parts)
        print(f"bundle: {len(parts)} parts, {total / MIB:.0f} MiB", flush=True)

        # Warm the page cache once so every contender reads from memory alike.
        for p in parts:
            with open(p, "rb") as fh:
                while fh.read(16 * MIB):
                    pass

        results: dict[str, list[float]] = {"sha256sum": [], "cp": [], "import": []}
        hashlib_times: list[float] = []
        for run in range(args.runs):
            results["sha256sum"].append(timed(["sha256sum", *parts]))

            dest = work / f"cp-{run}"
            dest.mkdir()
            results["cp"].append(timed(["cp", *parts, str(dest)]))
            shutil.rmtree(dest)

            start = time.perf_counter()
            h = hashlib.sha256()
            buf = bytearray(8 * MIB)
            view = memoryview(buf)
            for p in parts:
                with open(p, "rb", buffering=0) as fh:
                    while n := fh.readinto(buf):
                        h.update(view[:n])
            hashlib_times.append(time.perf_counter() - start)

            state = work / f"state-{run}"
            argv = [
                sys.executable, "-m", "herd", "bundle", "import", str(bundle),
                "--state-dir", str(state), "--trusted-signers", str(ALLOWED), "--json",
            ]  # fmt: skip
            start = time.perf_counter()
            out = subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
            results["import"].append(time.perf_counter() - start)
            assert json.loads(out.stdout)["bytes_to_copy"] >= total
            shutil.rmtree(state)

        best = {k: min(v) for k, v in results.items()}
        rate = {k: total / MIB / v for k, v in best.items()}
        print()
        print(f"{'':28}{'best s':>8}{'MiB/s':>9}   (of {args.runs} runs, warm cache)")
        for key, label in (
            ("sha256sum", "sha256sum (baseline)"),
            ("cp", "cp (no hash, no fsync)"),
        ):
            print(f"{label:28}{best[key]:8.2f}{rate[key]:9.0f}")
        print(
            f"{'python hashlib read+hash':28}{min(hashlib_times):8.2f}"
            f"{total / MIB / min(hashlib_times):9.0f}"
        )
        print(f"{'herd bundle import':28}{best['import']:8.2f}{rate['import']:9.0f}")
        print()
        ratio = best["import"] / best["sha256sum"]
        print(
            f"import / sha256sum = {ratio:.2f}x (target <= 1.2x: "
            f"{'met' if ratio <= 1.2 else 'NOT met'}); "
            f"import / cp = {best['import'] / best['cp']:.2f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
