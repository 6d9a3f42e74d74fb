"""Interrupted and starved imports: kill -9 mid-copy, and a disk that fills up.

Both run the real CLI in a subprocess. The full-disk cases mount a small tmpfs
in a private mount namespace (`unshare -m`), so nothing leaks to the host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from herd.bundle import signature
from herd.bundle.create import GGUFSource, ScanAttestation, create_bundle
from herd.store import Store
from tests.bundle.bundle_helpers import (
    ALLOWED,
    ROOT,
    big_gguf,
    store_files,
    verify_store_blobs,
)

MIB = 1 << 20


def two_model_bundle(tmp: Path, size: int, split: int | None) -> Path:
    """Two big models (first blob finishes staging before the second starts)."""
    report = tmp / "report.txt"
    report.write_text("clean\n")
    out = create_bundle(
        tmp / "big",
        name="big",
        ggufs=(
            GGUFSource(big_gguf(tmp / "a.gguf", size), "big-a:1", template="A"),
            GGUFSource(big_gguf(tmp / "b.gguf", size), "big-b:1", template="B"),
        ),
        split_size=split,
        attestation=ScanAttestation(report, "clean"),
    )
    (tmp / "a.gguf").unlink()
    (tmp / "b.gguf").unlink()
    signature.sign(out, ALLOWED.parent / "test_ed25519")
    return out


def _size(path: Path) -> int:
    """Size of a file the running import may rename or remove at any moment."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def import_cmd(bundle: Path, state_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "herd",
        "bundle",
        "import",
        str(bundle),
        "--state-dir",
        str(state_dir),
        "--trusted-signers",
        str(ALLOWED),
        "--json",
        *extra,
    ]


def _mid_copy(staging: Path) -> bool:
    """A big blob already staged and another one's copy under way."""
    if not staging.is_dir():
        return False
    big_staged = [p for p in staging.glob("sha256-*") if _size(p) > MIB]
    temps = list(staging.glob(".herd-tmp-*"))
    return bool(big_staged and temps and _size(temps[0]) > 0)


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("T", "t", "Z"):
            return
        time.sleep(0.001)


def test_kill_9_mid_import_then_rerun_resumes_and_verifies(tmp_path):
    bundle = two_model_bundle(tmp_path, 100 * MIB, split=48 * MIB)
    state_dir = tmp_path / "state"
    store = state_dir / "store"
    staging = store / ".staging" / "big"
    proc = subprocess.Popen(
        import_cmd(bundle, state_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    killed = False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            # Never a partial blob under a final name, at any moment.
            if (store / "blobs").is_dir():
                for blob in (store / "blobs").iterdir():
                    assert not blob.name.startswith(".herd-tmp"), blob
            if _mid_copy(staging):
                # Freeze it, then look again: the copy may have finished (and
                # renamed its temp file) between the look and the signal.
                proc.send_signal(signal.SIGSTOP)
                _wait_stopped(proc.pid)
                if _mid_copy(staging):
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                proc.send_signal(signal.SIGCONT)
            time.sleep(0.002)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        proc.wait(timeout=30)
    assert killed and proc.returncode == -signal.SIGKILL, "import ended before kill"
    # Killed mid-copy: no model visible, nothing unverified in the store.
    assert not (store / "manifests").exists() or not any(
        p.is_file() for p in (store / "manifests").rglob("*")
    )
    if (store / "blobs").is_dir():
        verify_store_blobs(store)
    leftovers = list(staging.glob(".herd-tmp-*"))
    assert leftovers, "the interrupted copy left its temp file (cleaned on re-run)"

    done = subprocess.run(
        import_cmd(bundle, state_dir), capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    total = sum(p.stat().st_size for p in (bundle / "blobs").iterdir())
    assert 0 < result["bytes_to_copy"] < total, "staged blob was reused"
    assert sorted(result["models"]) == ["big-a:1", "big-b:1"]
    # 2 weights, 2 templates, 1 config (identical for both models, stored once)
    assert verify_store_blobs(store) == 5
    assert not (store / ".staging").exists()
    assert not [f for f in store_files(store) if ".herd-tmp" in f]
    for name in ("big-a", "big-b"):
        assert (store / "manifests/registry.ollama.ai/library" / name / "1").is_file()


def _unshare_available() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare not installed"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a mount namespace: {probe.stderr.strip()}"
    return None


needs_mount = pytest.mark.skipif(
    bool(_unshare_available()), reason=str(_unshare_available())
)


def in_namespace(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-ec", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@needs_mount
def test_disk_too_small_is_refused_before_copying(tmp_path):
    bundle = two_model_bundle(tmp_path, 20 * MIB, split=None)
    state_dir = tmp_path / "state"
    store = state_dir / "store"
    store.mkdir(parents=True)
    cmd = " ".join(import_cmd(bundle, state_dir))
    done = in_namespace(
        f"mount -t tmpfs -o size=24m tmpfs {store}\n"
        f"{cmd} && echo IMPORTED || echo rc=$?\n"
        f"find {store} -type f | grep -v '/.lock$' || true\n"
    )
    assert "rc=1" in done.stdout, done.stdout + done.stderr
    assert "not enough space" in done.stderr
    assert str(store) not in done.stdout.split("rc=1", 1)[1]  # no files left
    state = Store(state_dir)
    assert state.audit_rows()[0]["action"] == "bundle.refused"
    state.close()


@needs_mount
def test_disk_filling_up_mid_copy_is_refused_and_cleaned(tmp_path):
    bundle = two_model_bundle(tmp_path, 24 * MIB, split=None)
    state_dir = tmp_path / "state"
    store = state_dir / "store"
    store.mkdir(parents=True)
    filler = store / "filler"
    # The site scanner runs after each staged blob; this one fills the disk the
    # first time, as another process writing to the same filesystem would.
    scanner = tmp_path / "scanner.sh"
    scanner.write_text(
        f"#!/bin/sh\n[ -e {filler} ] || head -c 100M /dev/zero > {filler} "
        "2>/dev/null || true\nexit 0\n"
    )
    scanner.chmod(0o755)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(
        "apiVersion: herd/v1\nkind: Fleet\nmetadata: {name: t}\n"
        "router: {listen: '127.0.0.1:11435', node_networks: [127.0.0.0/8]}\n"
        "nodes: [{name: n1, url: 'http://127.0.0.1:11434'}]\n"
        "models: [{name: 'big-a:1', place: {nodes: [n1]}}]\n"
        f"bundles: {{trusted_signers: {ALLOWED}, scan_command: '{scanner} {{path}}'}}\n"
    )
    cmd = " ".join(import_cmd(bundle, state_dir, "--manifest", str(manifest)))
    cmd = cmd.replace(f"--trusted-signers {ALLOWED} ", "")
    done = in_namespace(
        f"mount -t tmpfs -o size=80m tmpfs {store}\n"
        f"{cmd} && echo IMPORTED || echo rc=$?\n"
        f"echo FILES; find {store} -type f "
        "| grep -v -e '/.lock$' -e '/filler$' || true\n"
    )
    assert "rc=1" in done.stdout, done.stdout + done.stderr
    assert "disk full while copying" in done.stderr
    assert done.stdout.split("FILES", 1)[1].strip() == "", "staging was cleaned"
    state = Store(state_dir)
    rows = state.audit_rows()
    assert rows[0]["action"] == "bundle.refused" and "disk full" in rows[0]["detail"]
    state.close()
    assert os.path.isdir(store)
