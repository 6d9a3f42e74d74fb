"""`herd wheelhouse`: herd and every dependency as wheels, for an offline install.

On a connected machine, `build` writes OUT_DIR with one wheel per distribution
(herd's own built from its source tree) and `requirements.txt` pinning each
by version and sha256, so the isolated host installs exactly these bytes:

    pip install --no-index --require-hashes --find-links OUT_DIR \
        -r OUT_DIR/requirements.txt

Wheels come from pip (`pip wheel`, or `pip download --only-binary` for
another `--python`/`--platform`), or, with `--from-installed`, from the
distributions installed in this environment: each is packed back into a wheel
from its installed files (herd.wheelpack), after checking every file against
the sha256 its RECORD holds (an edited install is refused). That needs no
index at all.

`requirements.txt` names every wheel's hash, so signing it signs the whole
wheelhouse: `ssh-keygen -Y sign -n herd-wheelhouse` (`--sign KEY`), and
`verify` checks the signature, then every wheel against its pin.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from herd.wheelpack import WheelhouseError, pack_installed, runtime_closure

DIST_NAME = "herd-fleet"
REQUIREMENTS = "requirements.txt"
SIGNATURE = REQUIREMENTS + ".sig"
NAMESPACE = "herd-wheelhouse"
PIP_TIMEOUT_S = 1800
SSH_TIMEOUT_S = 60


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]

    def line(self) -> str:
        hashes = " ".join(f"--hash=sha256:{h}" for h in self.hashes)
        return f"{self.name}=={self.version} {hashes}"


# -- pure helpers ---------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pins(wheels: Iterable[Path]) -> list[Pin]:
    """One pin per distribution and version, with the hash of each of its wheels."""
    found: dict[tuple[str, str], list[str]] = {}
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        found.setdefault((str(name), str(version)), []).append(sha256_file(wheel))
    return [
        Pin(name, version, tuple(sorted(hashes)))
        for (name, version), hashes in sorted(found.items())
    ]


def requirements_text(pinned: list[Pin]) -> str:
    head = (
        "# herd wheelhouse: install on the isolated host with\n"
        "#   pip install --no-index --require-hashes --find-links DIR "
        f"-r DIR/{REQUIREMENTS}\n"
    )
    return head + "".join(p.line() + "\n" for p in pinned)


def parse_requirements(text: str) -> dict[str, set[str]]:
    """{canonical name: hashes} of a requirements.txt this module wrote."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split()
        name = canonicalize_name(spec.split("==", 1)[0])
        out[name] = {o.split("sha256:", 1)[1] for o in options if "sha256:" in o}
    return out


# -- building --------------------------------------------------------------------


def source_tree() -> Path | None:
    """The project directory herd runs from, if it is a source checkout."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and f'name = "{DIST_NAME}"' in pyproject.read_text():
        return root
    return None


def _pip(args: list[str], progress: Callable[[str], None]) -> None:
    argv = [sys.executable, "-m", "pip", *args]
    progress("$ " + " ".join(argv[2:]))
    try:
        done = subprocess.run(argv, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as ex:
        raise WheelhouseError(f"pip failed to run: {ex}") from ex
    if done.returncode != 0:
        raise WheelhouseError(
            f"pip {args[0]} failed (exit {done.returncode}); see above"
        )


def herd_wheel(
    out_dir: Path, *, offline: bool, progress: Callable[[str], None]
) -> Path:
    """herd's own wheel: built from the source tree, else packed from the install."""
    tree = source_tree()
    if tree is None:
        return pack_installed(metadata.distribution(DIST_NAME), out_dir)
    with tempfile.TemporaryDirectory(prefix="herd-wheel-") as tmp:
        args = ["wheel", "--no-deps", "--wheel-dir", tmp, str(tree)]
        if offline:
            # No index: build with the setuptools installed here.
            args[1:1] = ["--no-index", "--no-build-isolation"]
        _pip(args, progress)
        (built,) = Path(tmp).glob("*.whl")
        return Path(shutil.copy2(built, out_dir / built.name))


def build(
    out_dir: Path,
    *,
    python: str | None = None,
    platforms: tuple[str, ...] = (),
    from_installed: bool = False,
    progress: Callable[[str], None] = print,
) -> list[Pin]:
    """Fill `out_dir` with wheels and requirements.txt; return the pins."""
    if from_installed and (python or platforms):
        raise WheelhouseError(
            "--from-installed packs this environment's wheels; it cannot target "
            "another --python or --platform"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.glob("*.whl")):
        raise WheelhouseError(f"{out_dir} already holds wheels; use an empty directory")
    own = herd_wheel(out_dir, offline=from_installed, progress=progress)
    progress(f"built {own.name}")
    if from_installed:
        for dist in runtime_closure(DIST_NAME):
            if canonicalize_name(dist.metadata["Name"]) == DIST_NAME:
                continue
            packed = pack_installed(dist, out_dir)
            progress(f"packed {packed.name}")
    elif python or platforms:
        args = ["download", "--only-binary=:all:", "--dest", str(out_dir)]
        if python:
            args += ["--python-version", python, "--implementation", "cp"]
        for platform in platforms:
            args += ["--platform", platform]
        _pip([*args, str(own)], progress)
    else:
        _pip(["wheel", "--wheel-dir", str(out_dir), str(own)], progress)
    pinned = pins(sorted(out_dir.glob("*.whl")))
    (out_dir / REQUIREMENTS).write_text(requirements_text(pinned))
    progress(f"wrote {out_dir / REQUIREMENTS}: {len(pinned)} distributions pinned")
    return pinned


# -- signing and verifying -----------------------------------------------------------


def _ssh_keygen(
    args: list[str], data: bytes | None = None
) -> subprocess.CompletedProcess:
    exe = shutil.which("ssh-keygen")
    if not exe:
        raise WheelhouseError("ssh-keygen not found (install openssh-client)")
    try:
        return subprocess.run(
            [exe, "-Y", *args], input=data, capture_output=True, timeout=SSH_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as ex:
        raise WheelhouseError(f"ssh-keygen failed to run: {ex}") from ex


def sign(out_dir: Path, key: Path) -> Path:
    """requirements.txt.sig: an SSH signature (namespace herd-wheelhouse)."""
    requirements = out_dir / REQUIREMENTS
    if not requirements.is_file():
        raise WheelhouseError(f"{out_dir}: no {REQUIREMENTS} to sign")
    (out_dir / SIGNATURE).unlink(missing_ok=True)
    done = _ssh_keygen(["sign", "-f", str(key), "-n", NAMESPACE, str(requirements)])
    if done.returncode != 0:
        raise WheelhouseError(f"signing failed: {done.stderr.decode().strip()}")
    return out_dir / SIGNATURE


def verify(out_dir: Path, allowed_signers: Path) -> tuple[str, int]:
    """Check the signature, then every wheel against its pin: (signer, wheels)."""
    requirements = out_dir / REQUIREMENTS
    signature = out_dir / SIGNATURE
    for path in (requirements, signature, allowed_signers):
        if not path.is_file():
            raise WheelhouseError(f"{path}: not found")
    data = requirements.read_bytes()
    found = _ssh_keygen(
        ["find-principals", "-s", str(signature), "-f", str(allowed_signers)]
    )
    principals = found.stdout.decode().split()
    if found.returncode != 0 or not principals:
        raise WheelhouseError(f"{signature}: signer's key is not in {allowed_signers}")
    checked = _ssh_keygen(
        [
            "verify",
            "-f",
            str(allowed_signers),
            "-I",
            principals[0],
            "-n",
            NAMESPACE,
            "-s",
            str(signature),
        ],
        data,
    )
    if checked.returncode != 0:
        raise WheelhouseError(
            f"{signature}: bad signature: {REQUIREMENTS} is not what {principals[0]} "
            "signed"
        )
    wanted = parse_requirements(data.decode())
    wheels = sorted(out_dir.glob("*.whl"))
    for wheel in wheels:
        name = canonicalize_name(str(parse_wheel_filename(wheel.name)[0]))
        if sha256_file(wheel) not in wanted.get(name, set()):
            raise WheelhouseError(
                f"{wheel.name}: not pinned by the signed {REQUIREMENTS}"
            )
    have = {canonicalize_name(str(parse_wheel_filename(w.name)[0])) for w in wheels}
    missing = sorted(set(wanted) - have)
    if missing:
        raise WheelhouseError(f"pinned but missing: {', '.join(missing)}")
    return principals[0], len(wheels)


# -- CLI ---------------------------------------------------------------------------


def cmd_wheelhouse(args: argparse.Namespace) -> int:
    out_dir = Path(args.dir)
    if args.verify:
        if not args.trusted_signers:
            raise WheelhouseError("--verify needs --trusted-signers FILE")
        signer, count = verify(out_dir, Path(args.trusted_signers))
        print(f"{out_dir}: signed by {signer}; {count} wheels match their pins")
        return 0
    pinned = build(
        out_dir,
        python=args.python,
        platforms=tuple(args.platform or ()),
        from_installed=args.from_installed,
        progress=lambda line: print(line, flush=True),
    )
    if args.sign:
        print(f"signed: {sign(out_dir, Path(args.sign).expanduser())}")
    print(
        f"{out_dir}: {len(pinned)} distributions. On the isolated host:\n"
        f"  pip install --no-index --require-hashes --find-links {out_dir} "
        f"-r {out_dir / REQUIREMENTS}"
    )
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `herd wheelhouse`."""
    from herd.cli import add_command

    parser = add_command(
        sub,
        "wheelhouse",
        cmd_wheelhouse,
        help="write herd and every dependency as pinned wheels for an offline install",
        examples="""\
  herd wheelhouse /media/usb/herd-0.1.0 --sign ~/.ssh/id_ed25519
  herd wheelhouse out/ --python 3.11 --platform manylinux2014_x86_64
  herd wheelhouse out/ --from-installed       no index: pack this environment
  herd wheelhouse --verify /media/usb/herd-0.1.0 --trusted-signers allowed_signers
then, on the isolated host (after verifying):
  pip install --no-index --require-hashes --find-links DIR -r DIR/requirements.txt""",
        parents=[common],
    )
    parser.add_argument("dir", metavar="OUT_DIR", help="directory for the wheels")
    parser.add_argument(
        "--python", metavar="X.Y", help="target Python version (default: this one)"
    )
    parser.add_argument(
        "--platform",
        action="append",
        metavar="TAG",
        help="target platform tag, e.g. manylinux2014_x86_64 (repeatable)",
    )
    parser.add_argument(
        "--from-installed",
        action="store_true",
        help="pack the distributions installed here instead of asking an index",
    )
    parser.add_argument(
        "--sign", metavar="KEY", help="sign requirements.txt with this SSH private key"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check OUT_DIR's signature and every wheel's hash instead of building",
    )
    parser.add_argument(
        "--trusted-signers", metavar="FILE", help="allowed_signers file for --verify"
    )
