"""The signed bytes are the parsed bytes, and nothing is parsed before the signature.

A stick is not a trusted file system: it may answer two reads of bundle.yaml
with different content. These tests swap bundle.yaml for real, in the middle of
a real `herd bundle verify/import` (a stand-in `ssh-keygen` first on PATH swaps
the file, then runs the real one), and feed hostile bundle.yaml files (alias
bomb, oversized) under resource limits that are only a safety net.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from herd.bundle import signature
from herd.bundle.verify import verify
from herd.errors import BundleError
from tests.bundle.bundle_helpers import (
    ALLOWED,
    PRINCIPAL,
    ROOT,
    TEST_KEY,
    make_bundle,
    read_doc,
    write_doc,
)

SIGNERS = ("--trusted-signers", str(ALLOWED))
#: Generous safety nets so a regression fails instead of eating the machine.
MEMORY_CAP = 1 << 30
SAFETY_TIMEOUT_S = 180


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_herd(
    state_dir: Path,
    *args: str,
    path_prefix: Path | None = None,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """The real CLI, under a memory cap (a safety net, not an assertion)."""
    full = {**os.environ, "HERD_STATE_DIR": str(state_dir), **(env or {})}
    if path_prefix is not None:
        full["PATH"] = f"{path_prefix}{os.pathsep}{full['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "herd", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=ROOT,
        timeout=SAFETY_TIMEOUT_S,
        preexec_fn=_limits,
        check=False,
    )


def swapping_ssh_keygen(tmp: Path, swap_from: Path, swap_to: Path) -> Path:
    """A directory whose `ssh-keygen` swaps `swap_to` once, then runs the real one.

    herd's first ssh-keygen call happens after it has read bundle.yaml: the
    swap lands exactly between "read" and "verify", where an old reader read
    the file a second time.
    """
    real = shutil.which("ssh-keygen")
    assert real, "the tests need openssh-client"
    bindir = tmp / "bin"
    bindir.mkdir()
    wrapper = bindir / "ssh-keygen"
    flag = tmp / "swapped"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e '{flag}' ]; then\n"
        f"  : > '{flag}'\n"
        f"  cp '{swap_from}' '{swap_to}.new' && mv '{swap_to}.new' '{swap_to}'\n"
        "fi\n"
        f"exec '{real}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return bindir


def good_and_evil(tmp: Path) -> tuple[Path, bytes, bytes]:
    """A signed bundle, its signed bundle.yaml and an unsigned variant of it."""
    bundle = make_bundle(tmp / "stick" / "b1")
    good = (bundle / "bundle.yaml").read_bytes()
    doc = read_doc(bundle)
    doc["name"] = "evil"
    write_doc(bundle, doc, sign=False)
    evil = (bundle / "bundle.yaml").read_bytes()
    (bundle / "bundle.yaml").write_bytes(good)
    assert good != evil
    return bundle, good, evil


@pytest.mark.parametrize("command", ["verify", "import"])
def test_bundle_yaml_swapped_after_the_read_is_refused(command, tmp_path, state_dir):
    """Unsigned content first, signed content on a second read: refused."""
    bundle, good, evil = good_and_evil(tmp_path)
    (bundle / "bundle.yaml").write_bytes(evil)
    stash = tmp_path / "good.yaml"
    stash.write_bytes(good)
    bindir = swapping_ssh_keygen(tmp_path, stash, bundle / "bundle.yaml")

    done = run_herd(
        state_dir, "bundle", command, str(bundle), *SIGNERS, "--json",
        path_prefix=bindir,
    )  # fmt: skip

    assert (tmp_path / "swapped").exists(), "the swap happened during the run"
    assert done.returncode == 1, done.stdout
    assert "bad signature" in done.stderr and "evil" not in done.stdout
    listed = run_herd(state_dir, "bundle", "list", "--json")
    assert json.loads(listed.stdout)["bundles"] == []


@pytest.mark.parametrize("command", ["verify", "import"])
def test_swap_after_the_read_never_reaches_the_parser(command, tmp_path, state_dir):
    """Signed content first, unsigned on a second read: the signed bytes win."""
    bundle, good, evil = good_and_evil(tmp_path)
    stash = tmp_path / "evil.yaml"
    stash.write_bytes(evil)
    bindir = swapping_ssh_keygen(tmp_path, stash, bundle / "bundle.yaml")

    done = run_herd(
        state_dir, "bundle", command, str(bundle), *SIGNERS, "--json",
        path_prefix=bindir,
    )  # fmt: skip

    assert (tmp_path / "swapped").exists()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["bundle"] == "b1" and result["signer"] == PRINCIPAL


def _alias_bomb() -> str:
    """Nine levels of ten aliases: 400 bytes that expand to a billion strings."""
    lines = ["format: herd-bundle/v1", "a: &a [" + ",".join(['"lol"'] * 10) + "]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    lines.append("name: *i")
    return "\n".join(lines) + "\n"


ALIAS_BOMB = _alias_bomb()


def test_signed_alias_bomb_is_refused_by_the_alias_guard(tmp_path, state_dir):
    """A signer's mistake (or a stolen key) still cannot make the parser explode."""
    assert len(ALIAS_BOMB) < 1000
    bundle = make_bundle(tmp_path / "b1")
    (bundle / "bundle.yaml").write_text(ALIAS_BOMB)
    signature.sign(bundle, TEST_KEY)
    for command in ("verify", "import"):
        done = run_herd(state_dir, "bundle", command, str(bundle), *SIGNERS)
        assert done.returncode == 1, done.stdout
        assert "alias bomb" in done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_unsigned_alias_bomb_is_refused_by_the_signature(tmp_path, state_dir):
    """Nothing is parsed before the signature holds."""
    bundle = make_bundle(tmp_path / "b1")
    (bundle / "bundle.yaml").write_text(ALIAS_BOMB)  # the old signature stays
    for command in ("verify", "import"):
        done = run_herd(state_dir, "bundle", command, str(bundle), *SIGNERS)
        assert done.returncode == 1, done.stdout
        assert "bad signature" in done.stderr, done.stderr


def test_oversized_bundle_yaml_is_refused_unread(tmp_path, state_dir):
    bundle = make_bundle(tmp_path / "b1")
    index = bundle / "bundle.yaml"
    with open(index, "ab") as fh:  # still valid YAML: a very long comment
        fh.write(b"#" + b"x" * (4 << 20) + b"\n")
    for command in ("verify", "import"):
        done = run_herd(state_dir, "bundle", command, str(bundle), *SIGNERS)
        assert done.returncode == 1
        assert "bundle.yaml is limited to 4,194,304 bytes" in done.stderr


def test_oversized_or_linked_signature_is_refused(tmp_path, policy):
    bundle = make_bundle(tmp_path / "b1")
    sig = bundle / "bundle.yaml.sig"
    real = sig.read_bytes()
    sig.write_bytes(real + b"\n" * (1 << 20))
    with pytest.raises(BundleError, match="bundle.yaml.sig is limited to"):
        verify(bundle, policy)
    kept = tmp_path / "kept.sig"
    kept.write_bytes(real)
    sig.unlink()
    sig.symlink_to(kept)
    with pytest.raises(BundleError, match="symbolic link"):
        verify(bundle, policy)


def test_linked_or_special_bundle_yaml_is_refused(tmp_path, policy):
    bundle = make_bundle(tmp_path / "b1")
    index = bundle / "bundle.yaml"
    kept = tmp_path / "kept.yaml"
    kept.write_bytes(index.read_bytes())
    index.unlink()
    index.symlink_to(kept)
    with pytest.raises(BundleError, match="symbolic link"):
        verify(bundle, policy)
    index.unlink()
    os.mkfifo(index)
    assert stat.S_ISFIFO(os.lstat(index).st_mode)
    with pytest.raises(BundleError, match="not a regular file"):
        verify(bundle, policy)


def _signers_with(tmp: Path, options: str) -> Path:
    key = (TEST_KEY.with_suffix(".pub")).read_text().split()[:2]
    path = tmp / "allowed_signers"
    path.write_text(f"{PRINCIPAL} {options} {' '.join(key)}\n")
    return path


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ('valid-before="20200101"', "key has expired"),
        ('valid-after="20990101"', "key is not yet valid"),
        ('namespaces="git"', "not permitted for use in signature namespace"),
    ],
)
def test_known_key_refused_says_why(options, reason, tmp_path, state_dir):
    """An expired key is in the file: say it expired, not that it is missing."""
    bundle = make_bundle(tmp_path / "b1")
    signers = _signers_with(tmp_path, options)
    done = run_herd(
        state_dir, "bundle", "verify", str(bundle), "--trusted-signers", str(signers)
    )
    assert done.returncode == 1
    assert reason in done.stderr and "line 1" in done.stderr, done.stderr
    assert "not in" not in done.stderr
