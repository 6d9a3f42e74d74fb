"""SSH signatures over bundle.yaml: the real `ssh-keygen -Y`, namespace herd-bundle.

Trust is an OpenSSH allowed_signers file named by the manifest
(`bundles.trusted_signers`); the principal it maps the key to is the signer
identity herd records. Verification takes bytes, never paths into the
bundle: the caller reads bundle.yaml and its signature once and the very same
bytes are checked here and parsed afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from herd.bundle import transfer
from herd.bundle.layout import INDEX, NAMESPACE, SIGNATURE
from herd.errors import BundleError

TIMEOUT_S = 60
#: An SSH signature is a few hundred bytes; anything larger is not one.
MAX_SIGNATURE_BYTES = 64 << 10
_KEY_PROBLEM = re.compile(
    r":(\d+): (key has expired.*|key is not yet valid.*|"
    r"key is not permitted for use in signature namespace.*)$"
)


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


def read_signature(bundle_dir: Path) -> bytes:
    """The bytes of `bundle.yaml.sig`, read once (regular file, no link, bounded)."""
    sig = bundle_dir / SIGNATURE
    try:
        return transfer.read_small(sig, MAX_SIGNATURE_BYTES, str(sig), SIGNATURE)
    except FileNotFoundError as ex:
        raise BundleError(
            f"{bundle_dir}: unsigned bundle (no {SIGNATURE}); sign it with "
            "`herd bundle sign DIR --key KEY` on the connected side"
        ) from ex


def _key_problem(stderr: bytes) -> str | None:
    """Why ssh-keygen refused a key it FOUND in allowed_signers, else None.

    ssh-keygen reports validity only for a line whose key matches the
    signature's: "FILE:LINE: key has expired: verify time T > valid-before V",
    "...: key is not yet valid: ...", "...: key is not permitted for use in
    signature namespace ...".
    """
    for line in stderr.decode(errors="replace").splitlines():
        m = _KEY_PROBLEM.search(line)
        if m:
            return f"line {m.group(1)}: {m.group(2).strip()}"
    return None


def verify(data: bytes, sig: bytes, allowed_signers: Path, label: str) -> str:
    """Check `sig` over exactly `data`; return the signer principal.

    `data` goes to ssh-keygen on stdin and `sig` is written to a private temp
    file: what is verified is what the caller holds, whatever the stick does
    afterwards. `label` names the signature file in errors.
    """
    if not allowed_signers.is_file():
        raise BundleError(f"{allowed_signers}: trusted signers file not found")
    exe = _ssh_keygen()
    with tempfile.TemporaryDirectory(prefix="herd-sig-") as private:
        sig_path = Path(private) / SIGNATURE
        sig_path.write_bytes(sig)
        found = _run(
            [
                exe,
                "-Y",
                "find-principals",
                "-s",
                str(sig_path),
                "-f",
                str(allowed_signers),
            ]
        )
        principals = found.stdout.decode(errors="replace").split()
        if found.returncode != 0 or not principals:
            problem = _key_problem(found.stderr)
            if problem:
                raise BundleError(
                    f"{label}: signer's key is in {allowed_signers} but refused "
                    f"({problem}); renew the key or its dates in that file"
                )
            raise BundleError(
                f"{label}: signer not trusted: its key is not in {allowed_signers} "
                f"(or the signature is malformed)"
            )
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
                    str(sig_path),
                ],
                data,
            )
            if done.returncode == 0:
                return principal
            problem = _key_problem(done.stderr)
            if problem:
                raise BundleError(
                    f"{label}: signer {principal}'s key is in {allowed_signers} but "
                    f"refused ({problem})"
                )
    raise BundleError(
        f"{label}: bad signature: bundle.yaml does not match what "
        f"{principals[0]} signed (edited after signing?)"
    )
