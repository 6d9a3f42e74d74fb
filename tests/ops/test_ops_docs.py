"""Every `herd audit` / `herd traces` line shown in README.md and in the
commands' --help examples runs as shown (against a state with audit rows and
traces), so the docs cannot drift from the options."""

from __future__ import annotations

import re
import shlex

import pytest

from herd.cli import build_parser, main
from herd.router.observe.traces import TraceLog
from herd.store import Store
from tests.ops.test_audit_chain import ROOT
from tests.ops.test_traces_cli import trace

COMMANDS = ("audit", "traces")


def shown_lines() -> list[str]:
    """Command lines from README code blocks and --help epilogs (descriptions,
    shell prompts and output redirections removed)."""
    texts = [(ROOT / "README.md").read_text()]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    texts += [sub.choices[name].format_help() for name in COMMANDS]
    lines = set()
    for text in texts:
        for raw in text.splitlines():
            line = raw.strip().removeprefix("$ ")
            if not re.match(rf"herd ({'|'.join(COMMANDS)})\b", line):
                continue
            line = re.split(r"\s{2,}|\s+#", line)[0]
            line = line.split(" > ")[0].split(" | ")[0]
            lines.add(line.strip())
    return sorted(lines)


LINES = shown_lines()


def test_the_docs_show_both_commands():
    assert any(line.startswith("herd audit verify") for line in LINES)
    assert any(line.startswith("herd traces stats") for line in LINES)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    state = tmp_path_factory.mktemp("docs")
    store = Store(state)
    store.audit("apply", {"summary": "s"}, revision=1)
    store.audit("node.pull", {"node": "gpu-1"})
    store.close()
    log = TraceLog(state)
    log.record(trace(5, tags="app:wiki"))
    log.record(trace(5, status=500, client="batch", tags="app:notebook"))
    log.close()
    return state


@pytest.mark.parametrize("line", LINES)
def test_documented_line_runs(line, state, monkeypatch, capsys):
    monkeypatch.setenv("HERD_STATE_DIR", str(state))
    assert main(shlex.split(line)[1:]) == 0, (line, capsys.readouterr())
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert out.out or "no " in out.err  # something shown, or why not
