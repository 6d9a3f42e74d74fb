"""Command lines in the comments of etc/ and systemd/, and bundles/README.md's prose.

README.md's lines run in tests/test_readme.py and bundles/README.md's `herd
bundle` blocks in tests/bundle/test_bundle_docs.py. Readers copy commands from
these other places too: every one must match a rule here, and is either run as
written (ports and paths moved into a temporary directory) or skipped for a
stated reason. Every `herd ...` line, run or not, must parse.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from herd.cli import build_parser
from tests.conftest import ROOT
from tests.router.routerproc import free_port
from tests.test_readme import Shell

#: Files whose comments show commands.
COMMENTED = sorted([*ROOT.glob("etc/*"), *ROOT.glob("systemd/*")])
FIRST = r"(?:herd|cp|install|systemctl|systemd-\S+|python3?)"
#: `#   CMD ...` (indented, or after `Install:`), up to two spaces before a remark;
#: `# herd is ...` with one space is prose.
COMMENT_LINE = re.compile(
    rf"^#(?:\s{{2,}}|\s+Install:\s+)({FIRST}\s.*?)(?:\s{{2,}}\S.*)?$"
)
HOST = "host install: tests/service/test_units.py checks these files"
SKIP = {
    r"cp systemd/\S+ /(usr/lib|etc/systemd/system)/\S*": HOST,
    r"cp etc/herd\.env /etc/herd/herd\.env": HOST,
    r"systemd-sysusers|systemd-tmpfiles --create herd\.conf": HOST,
    r"install -m 0640 -o root -g herd fleet\.key /etc/herd/fleet\.key": HOST,
    r"systemctl (daemon-reload|enable --now herd-(router|node))": HOST,
    r"herd apply /etc/herd/fleet\.yaml": "host install (as root, /var/lib/herd)",
}


def comment_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        found = COMMENT_LINE.match(raw.strip())
        if found:
            lines.extend(part.strip() for part in found.group(1).split(" && "))
    return lines


def inline_herd_spans(text: str) -> list[str]:
    return [s for s in re.findall(r"`(herd [^`\n]+)`", text) if "…" not in s]


def skipped(line: str) -> str | None:
    return next((why for rx, why in SKIP.items() if re.fullmatch(rx, line)), None)


def test_every_commented_command_is_known():
    found = {str(p.relative_to(ROOT)): comment_lines(p) for p in COMMENTED}
    assert found["etc/demo.yaml"] and found["etc/fleet.yaml"]
    assert found["systemd/herd-router.service"]
    runs = {"etc/demo.yaml", "etc/fleet.yaml"}  # run by the tests below
    unknown = [
        (name, line)
        for name, lines in found.items()
        for line in lines
        if name not in runs and not skipped(line)
    ]
    assert not unknown, f"commented commands no rule knows (add one): {unknown}"


def test_every_documented_herd_line_parses():
    texts = [p.read_text() for p in COMMENTED]
    texts.append((ROOT / "bundles" / "README.md").read_text())
    lines = [ln for p in COMMENTED for ln in comment_lines(p) if ln.startswith("herd")]
    lines += [span for text in texts for span in inline_herd_spans(text)]
    assert len(lines) > 10, lines
    parser = build_parser()
    for line in lines:
        argv = line.removesuffix(" &").split()[1:]  # `&` is the shell's
        if all(re.fullmatch(r"[a-z]+", word) for word in argv):
            argv.append("--help")  # a command named in prose, without arguments
        try:
            parser.parse_args(argv)
        except SystemExit as ex:
            assert ex.code == 0 and argv[-1] == "--help", line


@pytest.fixture
def shell(tmp_path):
    sh = Shell(tmp_path)
    shutil.copytree(ROOT / "etc", sh.cwd / "etc")
    sh.env["HERD_SYSTEMD_DROPIN_DIR"] = "off"  # never the host's systemd
    return sh


def test_demo_yaml_by_hand(shell):
    """etc/demo.yaml's header, in its order: sim, apply, serve; a chat; Ctrl-C."""
    lines = comment_lines(ROOT / "etc" / "demo.yaml")
    assert sorted(ln.split()[1] for ln in lines) == ["apply", "serve", "sim"], lines
    sim_port, router_port = free_port(), free_port()
    demo = shell.cwd / "etc" / "demo.yaml"
    text = demo.read_text().replace("127.0.0.1:11434", f"127.0.0.1:{sim_port}")
    demo.write_text(text.replace("127.0.0.1:11435", f"127.0.0.1:{router_port}"))
    shell.subs = {"--port 11434 &": f"--port {sim_port}"}
    shell.env.pop("HERD_APPLY_NODES", None)  # apply checks the (loopback) node
    started = []
    try:
        for line in lines:
            if line.startswith("herd sim"):
                started.append(shell.start(line, "simulation on")[0])
            elif line.startswith("herd serve"):
                started.append(shell.start(line, "router on")[0])
            else:
                out = shell.run(line)  # exit 0: the node was up when checked
                assert "Recorded revision 1" in out, out
        reply = httpx.post(
            f"http://127.0.0.1:{router_port}/api/chat",
            json={
                "model": "llama3.2:3b",
                "messages": [{"role": "user", "content": "hi"}],
            },
            timeout=30,
        )
        assert reply.status_code == 200 and '"done":true' in reply.text
    finally:
        for proc in reversed(started):
            Shell.interrupt(proc)
    assert (shell.cwd / ".herd-state" / "herd.db").exists()


def test_fleet_yaml_header(shell):
    """etc/fleet.yaml's header, from the repository's root as written."""
    lines = comment_lines(ROOT / "etc" / "fleet.yaml")
    assert [ln.split()[1] for ln in lines] == ["validate", "plan", "apply"], lines
    validate, plan, apply = lines
    assert "valid: fleet" in shell.run(validate)
    shell.run(plan, expect=2)  # changes (HERD_APPLY_NODES=0: no node contacted)
    assert "--yes" in shell.run(apply, expect=1)  # no terminal: asks for --yes
    assert "Recorded revision 1" in shell.run(apply.replace("apply", "apply --yes"))
    shell.run(plan)  # nothing left to change


def test_make_example_rebuilds_the_example_bundle(tmp_path):
    """bundles/README.md: `python bundles/make_example.py` gives the same bytes."""
    assert (
        "`python bundles/make_example.py`" in (ROOT / "bundles/README.md").read_text()
    )
    root = tmp_path / "repo"
    (root / "bundles").mkdir(parents=True)
    shutil.copy(ROOT / "bundles" / "make_example.py", root / "bundles")
    shutil.copytree(ROOT / "tests" / "bundle" / "keys", root / "tests/bundle/keys")
    done = subprocess.run(
        [sys.executable, "bundles/make_example.py"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    made, shipped = root / "bundles" / "example", ROOT / "bundles" / "example"
    files = sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(made) for p in made.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(shipped, made, files, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


def _parsers(parser: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_help_example_parses():
    """The `examples:` of every `herd ... --help` are command lines that parse."""
    parser = build_parser()
    lines = []
    for name, sub in _parsers(parser):
        text = sub.format_help()
        if "examples:" not in text:
            continue
        for raw in text.split("examples:", 1)[1].splitlines():
            line = re.split(r"\s{2,}", raw.strip(), maxsplit=1)[0]
            for part in re.split(r" (?:\|\|?|&&|;) ", line):  # pipes, chains
                if part.startswith("herd ") and "…" not in part:
                    lines.append((name, part))
    assert len({name for name, _ in lines}) > 15, lines
    for name, line in lines:
        argv = shlex.split(re.sub(r" (?:&|[<>] \S+)$", "", line))[1:]  # the shell's
        if all(re.fullmatch(r"[a-z]+", word) for word in argv) and len(argv) == 1:
            argv.append("--help")
        try:
            parser.parse_args(argv)
        except SystemExit as ex:
            assert ex.code == 0 and argv[-1] == "--help", (name, line)
