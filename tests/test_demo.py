"""`herd demo`: one command starts the demo fleet; one signal stops all of it.

Real processes: `herd demo` starts `herd sim` and gunicorn; the official
`ollama` and `openai` clients chat through the router; then SIGINT (to the
process group, as a terminal's Ctrl-C does, or to `herd demo` alone) must
leave no process behind, every port free and no temporary state.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ollama
import openai
import pytest

from tests.conftest import ROOT


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Started:
    def __init__(self, proc: subprocess.Popen, text: str):
        self.proc = proc
        self.text = text
        self.router = re.search(r"router on (http://[\d.]+:\d+)", text).group(1)
        self.node_ports = [
            int(p) for p in re.findall(r" http://127\.0\.0\.1:(\d+)", text)
        ]
        self.state_dir = Path(re.search(r"state dir: (\S+)", text).group(1))


def start_demo(tmp_path: Path, *args: str) -> Started:
    env = {k: v for k, v in os.environ.items() if k != "HERD_STATE_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "herd", "demo", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "demo.err").open("wb"),
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,  # its own process group, like a terminal job
    )
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            err = (tmp_path / "demo.err").read_text()
            raise AssertionError(f"herd demo ended early: {lines} {err[-2000:]}")
        lines.append(line)
        if line.startswith("Ctrl-C"):
            return Started(proc, "".join(lines))


def chat_through(started: Started) -> None:
    reply = ollama.Client(host=started.router, timeout=30).chat(
        model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.message.content
    client = openai.OpenAI(base_url=started.router + "/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content


def assert_all_gone(started: Started, children: set[int]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in children):
        time.sleep(0.1)
    assert not [p for p in children if alive(p)], "processes left behind"
    ports = [int(started.router.rsplit(":", 1)[1]), *started.node_ports]
    assert all(port_free(p) for p in ports), ports


@pytest.mark.parametrize("target", ["process group", "herd demo alone"])
def test_demo_serves_and_one_sigint_stops_everything(tmp_path, target):
    started = start_demo(tmp_path)
    try:
        assert started.node_ports, started.text
        assert 11434 not in started.node_ports  # never Ollama's own port
        assert started.state_dir.is_dir()
        assert 'api_key="unused"' in started.text  # the hint works as printed
        chat_through(started)
        children = descendants(started.proc.pid)
        assert len(children) >= 3, children  # sim, gunicorn master and worker
        if target == "process group":
            os.killpg(started.proc.pid, signal.SIGINT)
        else:
            started.proc.send_signal(signal.SIGINT)
        assert started.proc.wait(60) == 0
        assert "herd demo: stopped" in started.proc.stdout.read()
    finally:
        if started.proc.poll() is None:
            os.killpg(started.proc.pid, signal.SIGKILL)
    assert_all_gone(started, children)
    assert not started.state_dir.exists()


def test_demo_children_die_with_it_even_on_sigkill(tmp_path):
    started = start_demo(tmp_path)
    children = descendants(started.proc.pid)
    started.proc.kill()  # no chance to clean up: the children must still go
    started.proc.wait(10)
    try:
        assert_all_gone(started, children)
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(started.state_dir)  # SIGKILL left no chance to remove it


def test_demo_keeps_an_explicit_state_dir(tmp_path):
    kept = tmp_path / "kept"
    started = start_demo(tmp_path, "--state-dir", str(kept))
    try:
        assert started.state_dir == kept
        out = subprocess.run(
            [sys.executable, "-m", "herd", "history", "--state-dir", str(kept)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert out.returncode == 0 and "apply" in out.stdout, out.stderr
    finally:
        started.proc.send_signal(signal.SIGINT)
        started.proc.wait(60)
    assert (kept / "herd.db").exists()
