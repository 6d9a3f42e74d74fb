"""SSH signatures over bundle.yaml: the real `ssh-keygen -Y`, namespace herd-bundle.

Trust is an OpenSSH allowed_signers file named by the manifest
(`bundles.trusted_signers`); the principal it maps the key to is the signer
identity herd records.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from herd.bundle.layout import INDEX, NAMESPACE, SIGNATURE
from herd.errors import BundleError

TIMEOUT_S = 60


def _ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if not exe:
        raise BundleError("ssh-keygen not found (install openssh-client)")
    return exe


def _run(argv: list[str], data: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            argv, input=data, capture_output=True, timeout=TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as ex:
        raise BundleError(f"ssh-keygen failed to run: {ex}") from ex


def sign(bundle_dir: Path, key: Path) -> Path:
    """Write `bundle.yaml.sig` next to bundle.yaml, signed with private `key`."""
    index = bundle_dir / INDEX
    if not index.is_file():
        raise BundleError(f"{bundle_dir}: no {INDEX} to sign")
    if not key.is_file():
        raise BundleError(f"{key}: no such key file")
    sig = bundle_dir / SIGNATURE
    sig.unlink(missing_ok=True)
    done = _run(
        [_ssh_keygen(), "-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(index)]
    )
    if done.returncode != 0 or not sig.exists():
        raise BundleError(
            f"signing failed: {done.stderr.decode(errors='replace').strip()}"
        )
    os.chmod(sig, 0o644)
    return sig


def verify(bundle_dir: Path, allowed_signers: Path) -> str:
    """Check bundle.yaml.sig against `allowed_signers`; return the signer principal."""
    sig = bundle_dir / SIGNATURE
    if not sig.is_file() or sig.is_symlink():
        raise BundleError(
            f"{bundle_dir}: unsigned bundle (no {SIGNATURE}); sign it with "
            "`herd bundle sign DIR --key KEY` on the connected side"
        )
    if not allowed_signers.is_file():
        raise BundleError(f"{allowed_signers}: trusted signers file not found")
    exe = _ssh_keygen()
    found = _run(
        [exe, "-Y", "find-principals", "-s", str(sig), "-f", str(allowed_signers)]
    )
    principals = found.stdout.decode(errors="replace").split()
    if found.returncode != 0 or not principals:
        raise BundleError(
            f"{sig}: signer not trusted: its key is not in {allowed_signers} "
            f"(or the signature is malformed)"
        )
    data = (bundle_dir / INDEX).read_bytes()
    for principal in principals:
        done = _run(
            [
                exe,
                "-Y",
                "verify",
                "-f",
                str(allowed_signers),
                "-I",
                principal,
                "-n",
                NAMESPACE,
                "-s",
                str(sig),
            ],
            data,
        )
        if done.returncode == 0:
            return principal
    raise BundleError(
        f"{sig}: bad signature: bundle.yaml does not match what "
        f"{principals[0]} signed (edited after signing?)"
    )
