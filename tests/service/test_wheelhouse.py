"""`herd wheelhouse`: an offline install from pinned, signed wheels.

The slow test builds a real wheelhouse with no package index (herd's wheel
from this source tree, every dependency packed from this environment's
installed distributions), signs and verifies it with the real ssh-keygen,
installs herd into a fresh venv with `pip --no-index --require-hashes`, and
runs `herd --version` from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from herd import __version__
from herd.wheelhouse import REQUIREMENTS, pins, requirements_text, sign
from tests.conftest import ROOT


def offline_env(**extra: str) -> dict[str, str]:
    """No pip configuration and no index: only what the wheelhouse holds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", **extra)
    return env


def keypair(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "signer_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", str(key)],
        check=True,
        timeout=60,
    )
    allowed = tmp_path / "allowed_signers"
    pub = key.with_suffix(".pub").read_text().split()
    allowed.write_text(f'ops@site namespaces="herd-wheelhouse" {pub[0]} {pub[1]}\n')
    return key, allowed


def herd(*args: str, cwd: Path = ROOT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "herd", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=offline_env(),
        **kw,
    )


@pytest.mark.slow
def test_offline_install_from_wheelhouse(tmp_path: Path) -> None:
    out = tmp_path / "wheelhouse"
    key, allowed = keypair(tmp_path)
    built = herd("wheelhouse", str(out), "--from-installed", "--sign", str(key))
    assert built.returncode == 0, built.stdout + built.stderr
    assert (out / "requirements.txt.sig").is_file()
    checked = herd(
        "wheelhouse", "--verify", str(out), "--trusted-signers", str(allowed)
    )
    assert checked.returncode == 0, checked.stderr
    assert "signed by ops@site" in checked.stdout

    lines = [
        line
        for line in (out / REQUIREMENTS).read_text().splitlines()
        if not line.startswith("#")
    ]
    assert any(
        line.startswith(f"herd-fleet=={__version__} --hash=sha256:") for line in lines
    )
    assert all("==" in line and "--hash=sha256:" in line for line in lines)
    assert len(lines) == len(list(out.glob("*.whl")))

    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    # This environment's pip installs into the fresh venv (which has none).
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-compile",
            "--no-index",
            "--require-hashes",
            "--find-links",
            str(out),
            "-r",
            str(out / REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=offline_env(),
    )
    assert install.returncode == 0, install.stdout + install.stderr
    version = subprocess.run(
        [str(venv / "bin" / "herd"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # not the source tree: the installed herd answers
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"herd {__version__}"
    # The installed herd is the venv's, with its data files (units, gunicorn.conf.py).
    assert (venv / "share/herd/systemd/herd-router.service").is_file()
    assert (venv / "share/herd/etc/gunicorn.conf.py").is_file()


def _fake_wheelhouse(tmp_path: Path) -> tuple[Path, Path, Path]:
    out = tmp_path / "wh"
    out.mkdir()
    (out / "alpha-1.0-py3-none-any.whl").write_bytes(b"alpha wheel bytes")
    (out / "beta-2.0-py3-none-any.whl").write_bytes(b"beta wheel bytes")
    (out / REQUIREMENTS).write_text(requirements_text(pins(sorted(out.glob("*.whl")))))
    key, allowed = keypair(tmp_path)
    sign(out, key)
    return out, key, allowed


def test_verify_names_what_was_tampered_with(tmp_path: Path) -> None:
    out, _, allowed = _fake_wheelhouse(tmp_path)
    verify = ("wheelhouse", "--verify", str(out), "--trusted-signers", str(allowed))
    ok = herd(*verify)
    assert ok.returncode == 0, ok.stderr
    assert "2 wheels match their pins" in ok.stdout

    (out / "beta-2.0-py3-none-any.whl").write_bytes(b"swapped")
    bad = herd(*verify)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "herd wheelhouse: beta-2.0-py3-none-any.whl: not pinned by the signed "
        "requirements.txt"
    ]
    (out / "beta-2.0-py3-none-any.whl").write_bytes(b"beta wheel bytes")
    (out / "gamma-3.0-py3-none-any.whl").write_bytes(b"smuggled")
    assert "gamma-3.0-py3-none-any.whl: not pinned" in herd(*verify).stderr
    (out / "gamma-3.0-py3-none-any.whl").unlink()

    text = (out / REQUIREMENTS).read_text()
    (out / REQUIREMENTS).write_text(text.replace("alpha", "alpha2"))
    edited = herd(*verify)
    assert edited.returncode == 1
    assert "bad signature" in edited.stderr
    (out / REQUIREMENTS).write_text(text)
    (out / "alpha-1.0-py3-none-any.whl").unlink()
    missing = herd(*verify)
    assert "pinned but missing: alpha" in missing.stderr


def test_verify_refuses_untrusted_signer(tmp_path: Path) -> None:
    out, _, _ = _fake_wheelhouse(tmp_path)
    (tmp_path / "other").mkdir()
    _, other = keypair(tmp_path / "other")
    result = herd("wheelhouse", "--verify", str(out), "--trusted-signers", str(other))
    assert result.returncode == 1
    assert "signer's key is not in" in result.stderr


def test_from_installed_cannot_target_other_platform(tmp_path: Path) -> None:
    result = herd(
        "wheelhouse",
        str(tmp_path / "o"),
        "--from-installed",
        "--platform",
        "manylinux2014_aarch64",
    )
    assert result.returncode == 1
    assert "cannot target another --python or --platform" in result.stderr


def _installed(site: Path) -> Path:
    """A tiny distribution installed the way pip leaves one: files, RECORD, WHEEL."""
    import base64
    import hashlib

    files = {
        "tiny/__init__.py": b"VALUE = 1\n",
        "tiny-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tiny\n"
        b"Version: 1.0\n",
        "tiny-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        "tiny-1.0.dist-info/INSTALLER": b"pip\n",
    }
    rows = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        rows.append(f"{rel},sha256={digest.decode()},{len(data)}")
    rows.append("tiny-1.0.dist-info/RECORD,,")
    (site / "tiny-1.0.dist-info/RECORD").write_text("\n".join(rows) + "\n")
    return site / "tiny-1.0.dist-info"


def test_packing_an_installed_distribution(tmp_path: Path) -> None:
    import time
    import zipfile
    from importlib import metadata

    from herd.wheelhouse import sha256_file
    from herd.wheelpack import WheelhouseError, pack_installed

    dist = metadata.PathDistribution(_installed(tmp_path / "site"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = pack_installed(dist, tmp_path / "a")
    assert first.name == "tiny-1.0-py3-none-any.whl"
    with zipfile.ZipFile(first) as whl:
        names = set(whl.namelist())
        assert whl.read("tiny/__init__.py") == b"VALUE = 1\n"
    assert "tiny-1.0.dist-info/INSTALLER" not in names  # installer artefacts go
    assert "tiny-1.0.dist-info/RECORD" in names
    time.sleep(2.1)  # zip stores times in 2 s steps: a later pack, same bytes
    second = pack_installed(dist, tmp_path / "b")
    assert sha256_file(first) == sha256_file(second)

    # An installed file edited since installation is refused, by name.
    (tmp_path / "site/tiny/__init__.py").write_bytes(b"VALUE = 2\n")
    (tmp_path / "c").mkdir()
    with pytest.raises(WheelhouseError, match=r"tiny/__init__.py changed since"):
        pack_installed(dist, tmp_path / "c")
