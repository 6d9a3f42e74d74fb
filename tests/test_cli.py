"""The real `herd` CLI in subprocesses: validate, plan, apply, history, rollback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import EXAMPLE, ROOT


def test_help_version_and_module_entry(herd):
    for args in (["--help"], ["validate", "--help"], ["apply", "--help"]):
        out = herd(*args)
        assert out.returncode == 0, out.stderr
        assert "usage: herd" in out.stdout
    assert "examples:" in herd("plan", "--help").stdout
    assert "--state-dir" in herd("history", "--help").stdout
    version = herd("--version")
    assert version.returncode == 0 and version.stdout.startswith("herd ")
    # The console script installed next to this interpreter (venv active or not).
    script = Path(sys.executable).parent / "herd"
    entry = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert entry.returncode == 0 and "validate" in entry.stdout


def test_every_subcommand_help_has_an_example(herd):
    from herd.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        out = herd(name, "--help")
        assert out.returncode == 0, (name, out.stderr)
        assert "examples:" in out.stdout, name


def test_validate_ok_and_errors(herd, tmp_path: Path):
    ok = herd("validate", str(EXAMPLE))
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        EXAMPLE.read_text().replace("max_concurrency: 8", "max_concurrency: x")
    )
    out = herd("validate", str(bad))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith(f"{bad}:")
    assert ": nodes[0].max_concurrency: " in out.stderr
    as_json = json.loads(herd("validate", "--json", str(bad)).stdout)
    assert as_json["valid"] is False and as_json["problems"][0]["line"] > 1


def test_apply_history_show_rollback_cycle(herd, tmp_path: Path, state_dir: Path):
    plan = herd("plan", str(EXAMPLE))
    assert plan.returncode == 2 and "+ node" in plan.stdout
    refused = herd("apply", str(EXAMPLE))  # no TTY, no --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert not (state_dir / "current.json").exists()

    first = herd("apply", "--yes", str(EXAMPLE))
    assert first.returncode == 0, first.stderr
    assert "Recorded revision 1" in first.stdout
    again = herd("apply", "--yes", str(EXAMPLE))
    assert again.returncode == 0 and "nothing recorded" in again.stdout
    assert herd("plan", str(EXAMPLE)).returncode == 0

    changed = tmp_path / "fleet.yaml"
    changed.write_text(
        EXAMPLE.read_text().replace("retention_days: 180", "retention_days: 30")
    )
    plan_json = json.loads(herd("plan", "--json", str(changed)).stdout)
    assert plan_json["from_revision"] == 1
    assert plan_json["changes"] == [
        {
            "kind": "audit",
            "name": "audit",
            "action": "change",
            "fields": {"retention_days": {"old": 180, "new": 30}},
        }
    ]
    assert herd("apply", "--yes", str(changed)).returncode == 0

    history = json.loads(herd("history", "--json").stdout)
    assert [h["revision"] for h in history] == [1, 2]
    assert history[1]["current"] and history[0]["user"]
    assert len(history[0]["sha256"]) == 64

    shown = herd("show", "1")
    assert shown.stdout == EXAMPLE.read_text()

    back = herd("rollback", "1", "--yes")
    assert back.returncode == 0, back.stderr
    history = json.loads(herd("history", "--json").stdout)
    assert history[-1]["rollback_of"] == 1 and history[-1]["current"]
    pointer = json.loads((state_dir / "current.json").read_text())
    assert pointer["revision"] == 3 and pointer["manifest"] == EXAMPLE.read_text()
    assert "rollback→1" in herd("history").stdout
    missing = herd("rollback", "42", "--yes")
    assert missing.returncode == 1 and "no revision 42" in missing.stderr


def test_broken_manifest_never_replaces_a_good_one(herd, tmp_path: Path, state_dir):
    assert herd("apply", "--yes", str(EXAMPLE)).returncode == 0
    before = (state_dir / "current.json").read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: herd/v1\nkind: Fleet\n")
    out = herd("apply", "--yes", str(bad))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert (state_dir / "current.json").read_bytes() == before


def test_state_dir_flag_beats_env(herd, tmp_path: Path):
    other = tmp_path / "other"
    assert (
        herd("apply", "--yes", "--state-dir", str(other), str(EXAMPLE)).returncode == 0
    )
    assert (other / "herd.db").exists()
    empty = herd("history")  # HERD_STATE_DIR points elsewhere, still empty
    assert empty.returncode == 1 and "herd apply" in empty.stderr


def test_default_state_dir_for_non_root(tmp_path: Path):
    code = textwrap.dedent("""
        import os
        os.geteuid = lambda: 1000
        os.environ["XDG_STATE_HOME"] = "/xdg"
        from herd.settings import default_state_dir
        print(default_state_dir())
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert out.stdout.strip() == "/xdg/herd"


def test_concurrent_applies_never_corrupt_state(tmp_path: Path, state_dir: Path):
    """Many applies of different manifests at once: each wins or fails cleanly."""
    files = []
    for i in range(10):
        f = tmp_path / f"f{i}.yaml"
        f.write_text(
            EXAMPLE.read_text().replace(
                "retention_days: 180", f"retention_days: {100 + i}"
            )
        )
        files.append(f)
    env = {
        "HERD_STATE_DIR": str(state_dir),
        "PATH": "/usr/bin:/bin",
        "HERD_APPLY_NODES": "0",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "herd", "apply", "--yes", str(f)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for f in files
    ]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    for code, _out, err in results:
        assert "Traceback" not in err
        assert code == 0 or "re-plan" in err or "busy" in err, err
    wins = sum(1 for code, _, _ in results if code == 0)
    assert wins >= 1
    from herd.store import Store, read_pointer

    store = Store(state_dir)
    revisions = store.revisions()
    assert [r.id for r in revisions] == list(range(1, len(revisions) + 1))
    assert len(revisions) == wins
    assert read_pointer(state_dir).sha256 == revisions[-1].sha256
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _apply_on_a_tty(state_dir: Path, answer: bytes) -> tuple[int, str]:
    """Run `herd apply` with a pseudo-terminal as stdin and answer its prompt."""
    import os
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child: stdin/stdout are the pty
        os.environ["HERD_STATE_DIR"] = str(state_dir)
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "herd", "apply", str(EXAMPLE)])
    out = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if not answered and b"[y/N]" in out:
            os.write(fd, answer + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_apply_asks_on_a_terminal(state_dir: Path):
    code, out = _apply_on_a_tty(state_dir, b"n")
    assert code == 1 and "not confirmed" in out
    assert not (state_dir / "current.json").exists()
    code, out = _apply_on_a_tty(state_dir, b"y")
    assert code == 0 and "Recorded revision 1" in out
    assert (state_dir / "current.json").exists()


def test_plan_of_a_broken_file_exits_1(herd, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: herd/v1\n")
    out = herd("plan", str(bad))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{bad}:1: (top): " in out.stderr


def test_command_owners_table_matches_the_modules():
    """`herd CMD` imports only COMMAND_OWNERS[CMD]: that module must register CMD
    (and every command must be in the table, or it pays for every import)."""
    import argparse
    import importlib

    from herd.cli import COMMAND_MODULES, COMMAND_OWNERS, common_parser

    registered = {}
    for module_name in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module_name).register(sub, common_parser())
        registered.update(dict.fromkeys(sub.choices, module_name))
    assert registered == COMMAND_OWNERS


def test_one_command_imports_only_its_own_module():
    """`herd sim` does not import the manifest validator or the state store."""
    code = (
        "import sys\n"
        "from herd.cli import main\n"
        "try:\n"
        "    main(['sim', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('jsonschema', 'herd.store') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().endswith("[]"), out.stdout + out.stderr
