"""Every command line README.md shows is run, so the README cannot drift.

Command lines come from the fenced `sh` blocks, `$ ` lines of other blocks and
inline code spans that start with a command. Each must match one rule below:
run it (in a temporary directory, against a temporary state; `herd demo` and
`herd sim` are started, probed with the README's own curl/python lines, and
stopped), or skip it for a stated reason (environment set-up this suite
already runs inside; `herd bundle` lines, tested in tests/bundle). A command
no rule knows fails the test: add a rule when you add a command to the README.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.router.routerproc import free_port

README = (ROOT / "README.md").read_text()
WORDS = ("herd", "curl", "python", "python3", "pip", "pytest", "bash", "apt-get", ".")
WORDS += ("ollama",)

SKIP = {
    r"python3 -m venv \.venv": "environment set-up: this suite runs inside that venv",
    r"\. \.venv/bin/activate": "environment set-up: this suite runs inside that venv",
    r"pip install -e (\.|'\.\[test\]')": "environment set-up (CI's .ci/run does it)",
    r"pip install (openai|py-spy)": "optional packages (openai is a test dependency)",
    r"pytest": "this is the suite itself",
    r"bash \.ci/run": "CI's own entry point: runs this suite",
    r"apt-get install .*": "benchmark tools; benchmarks are not part of the suite",
    r"python tests/bench/.*": "benchmarks are not part of the suite (README says so)",
    r"ollama pull --insecure ROUTER:.*": "needs a real Ollama; the registry has tests",
    # The quick start's bundle example runs below, into the demo's state.
    r"herd bundle(?!.*--state-dir \.herd-state).*": "bundle command lines are run "
    "by tests/bundle",
    r"herd health.*": "run against a live router and a stopped one by "
    "tests/router/test_router_health.py",
    r"herd node --(router|lan-proxy) .*": "the agent runs until stopped, against "
    "LAN addresses; tests/node and tests/discovery run it on loopback and in "
    "network namespaces",
    # Running under systemd: installing onto this host's systemd is not a test's
    # business; tests/service/test_units.py checks these very files instead
    # (systemd-analyze verify/security, sysusers and tmpfiles into a scratch root).
    r"cp (systemd|etc)/\S+ /(usr/lib|etc)/\S+": "host install: tests/service",
    r"systemd-(sysusers|tmpfiles --create herd\.conf)": "host install: tests/service",
    r"systemctl (daemon-reload|enable --now herd-router|restart herd-router)": "host",
    r"HERD_STATE_DIR=/var/lib/herd herd apply /etc/herd/fleet\.yaml": "host install",
    # The offline install: tests/service/test_wheelhouse.py builds, signs,
    # verifies and installs a wheelhouse with no index, as these lines do.
    r"herd wheelhouse /media/usb/\S+ .*": "offline install: tests/service",
    r"herd wheelhouse --verify \$W .*": "offline install: tests/service",
    r"W=/media/usb/\S+": "offline install: tests/service",
    r"ssh-keygen -Y verify .* -n herd-wheelhouse .*": "offline install: tests/service",
    r"python3\.11 -m venv /opt/herd/venv": "offline install: tests/service",
    r"/opt/herd/venv/bin/pip install --no-index --require-hashes .*": "offline install",
}


def command_lines() -> list[str]:
    """Every command the README shows, `&&` chains split, comments dropped."""
    lines: list[str] = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S):
        text = body.replace("\\\n", " ")
        for line in text.splitlines():
            if lang != "sh":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            line = re.sub(r"\s{2,}#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.extend(part.strip() for part in line.split(" && "))
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    for span in re.findall(r"`([^`\n]+)`", prose):
        first = span.split()[0]
        if re.match(r"herd [a-z]+: ", span):
            continue  # a message herd prints, quoted, not a command
        if first in WORDS and (" " in span or first == "herd"):
            lines.append(span.strip())
    return [re.sub(r"\s+", " ", line) for line in lines]


def skipped(line: str) -> str | None:
    return next((why for rx, why in SKIP.items() if re.fullmatch(rx, line)), None)


class Shell:
    """Runs README lines with the venv's `herd`, in a temp dir and temp state."""

    def __init__(self, tmp_path: Path):
        self.cwd = tmp_path / "work"
        self.cwd.mkdir()
        self.state = tmp_path / "state"
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "PATH": path, "HERD_STATE_DIR": str(self.state)}
        self.env.pop("http_proxy", None)
        self.ran: set[str] = set()
        self.subs: dict[str, str] = {}

    def prepare(self, line: str) -> str:
        for old, new in self.subs.items():
            line = line.replace(old, new)
        return line

    def run(self, line: str, expect: int | tuple[int, ...] = 0) -> str:
        out = subprocess.run(
            ["bash", "-c", self.prepare(line)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        codes = expect if isinstance(expect, tuple) else (expect,)
        assert out.returncode in codes, f"{line}\n{out.stdout}\n{out.stderr}"
        assert "Traceback" not in out.stderr, f"{line}\n{out.stderr}"
        self.ran.add(line)
        return out.stdout + out.stderr

    def start(self, line: str, ready: str) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen(
            ["bash", "-c", "exec " + self.prepare(line)],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        seen = []
        while True:
            got = proc.stdout.readline()
            assert got, f"{line} ended before {ready!r}: {seen}"
            seen.append(got)
            if ready in got:
                self.ran.add(line)
                return proc, "".join(seen)

    @staticmethod
    def interrupt(proc: subprocess.Popen) -> None:
        """Ctrl-C, as a terminal sends it: SIGINT to the process group."""
        os.killpg(proc.pid, signal.SIGINT)
        try:
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def test_every_readme_command_is_known_here():
    lines = command_lines()
    assert any(line == "herd demo" for line in lines), "the quick start lost herd demo"
    assert len(lines) > 20, lines


def test_readme_commands_run(tmp_path):
    shell = Shell(tmp_path)
    lines = [line for line in command_lines() if not skipped(line)]
    fleet = (ROOT / "etc" / "fleet.yaml").read_text()

    # The quick start: herd demo, probed with the README's own lines.
    port = free_port()
    shell.subs = {
        "herd demo": f"herd demo --port {port}",
        "127.0.0.1:11435": f"127.0.0.1:{port}",
    }
    for line in [ln for ln in lines if ln.startswith("herd demo")]:
        state = tmp_path / "kept"
        shell.subs["DIR"] = str(state)
        shell.subs[".herd-state"] = str(state)
        demo, text = shell.start(line, "Ctrl-C")
        try:
            assert f"127.0.0.1:{port}" in text
            if "--state-dir" in line:
                # The README's example bundle, into the running demo's state:
                # the imported model is listed there (not in /var/lib/herd).
                shell.subs["bundles/"] = f"{ROOT}/bundles/"
                shell.subs["tests/bundle/"] = f"{ROOT}/tests/bundle/"
                for bundle_line in [ln for ln in lines if ln.startswith("herd bundle")]:
                    out = shell.run(bundle_line)
                    assert "tiny:latest" in out, (bundle_line, out)
                assert (state / "store" / "manifests").is_dir()
            for probe in [ln for ln in lines if "127.0.0.1:11435" in ln]:
                out = shell.run(probe)
                assert out.strip() and "error" not in out.lower(), (probe, out)
            demo_state = re.search(r"state dir: (\S+)", text).group(1)
            out = shell.run(f"herd status --state-dir {demo_state}")
            assert "live router" in out
            shell.run(f"herd status --json --state-dir {demo_state}")
        finally:
            shell.interrupt(demo)
        if "--state-dir" in line:
            assert (state / "herd.db").exists()
            shutil.rmtree(state)
    shell.ran.add("herd status [--json]")
    # The README's bundle example goes into the quick start's state (issue #7
    # item 28: it went to /var/lib/herd while the router served .herd-state).
    assert any(ln.startswith("herd bundle import bundles/example") for ln in shell.ran)

    # herd sim, probed with the README's curl lines.
    sim_port = free_port()
    shell.subs = {
        "--port 11434": f"--port {sim_port}",
        "127.0.0.1:11434": f"127.0.0.1:{sim_port}",
    }
    for line in [ln for ln in lines if ln.startswith("herd sim ")]:
        sim, _ = shell.start(line, "simulation on")
        try:
            for probe in [ln for ln in lines if "127.0.0.1:11434/_sim" in ln]:
                assert shell.run(probe).strip()
        finally:
            shell.interrupt(sim)
    shell.subs = {}

    # The manifest tour: the README's validate output, for the same two mistakes.
    broken = fleet.replace("networks: [10.30.0.0/16]", "networks: [10.30.0.1/16]", 1)
    broken = broken.replace("fallbacks: [qwen2.5:0.5b]", "fallbacks: [mistral]", 1)
    assert broken.count("10.30.0.1/16") == 1 and "[mistral]" in broken
    (shell.cwd / "fleet.yaml").write_text(broken)
    shown = re.search(r"\$ herd validate fleet.yaml\n(.*?)```", README, re.S).group(1)
    out = shell.run("herd validate fleet.yaml", expect=1)
    for want in shown.splitlines():
        assert want.split(":", 2)[2] in out, (want, out)

    # Revisions: four applied revisions, then the README's block as written.
    for n in (1, 2, 3, 4):
        (shell.cwd / "fleet.yaml").write_text(
            fleet.replace("retention_days: 180", f"retention_days: {n}")
        )
        shell.run("herd apply --yes fleet.yaml")
    (shell.cwd / "fleet.yaml").write_text(fleet)
    shell.run("herd plan fleet.yaml", expect=2)
    out = shell.run("herd apply fleet.yaml", expect=1)  # no terminal, no --yes
    assert "--yes" in out and "refusing" in out
    assert "retention_days: 3" in shell.run("herd show 3")
    assert "apply" in shell.run("herd history")
    out = shell.run("herd rollback 3", expect=1)
    assert "--yes" in out

    # The audit trail's prose lines, on the state the applies above wrote (the
    # reader blocks run in tests/ops/test_ops_docs.py, with traces to read).
    assert "audit chain intact" in shell.run("herd audit verify")
    assert '"intact": true' in shell.run("herd audit verify --json")
    for line in ("herd traces --tag T", "herd traces stats --by tag"):
        assert "no traces in" in shell.run(line, expect=1)

    # Bare command names in prose must be real commands (each name once: the
    # prose names `herd apply` a dozen times).
    for line in dict.fromkeys(
        ln for ln in lines if re.fullmatch(r"herd( [a-z]+)?", ln)
    ):
        shell.run(f"{line} --help")
        shell.ran.add(line)

    left = [ln for ln in lines if ln not in shell.ran]
    assert not left, f"README command lines no test runs (add a rule): {left}"
