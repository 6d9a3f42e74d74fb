"""`herd serve` under systemd's notify protocol, with the real gunicorn master.

Each test binds an AF_UNIX datagram socket, starts the real `herd serve` with
NOTIFY_SOCKET pointing at it (as systemd does for Type=notify) and reads what
arrives: READY=1 only once /readyz answers 200; SIGHUP (`systemctl reload`)
sends RELOADING=1 then READY=1 for the applied revision while a running stream
goes on; SIGTERM sends STOPPING=1 and lets a running stream finish.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.router.routerproc import ROOT, apply, free_port, manifest, start_sim

pytestmark = pytest.mark.e2e


class Notifications:
    """The datagram socket systemd would own: every message, in order."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = 30) -> dict[str, str]:
        self.sock.settimeout(timeout)
        raw = self.sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)
        self.messages.append(fields)
        return fields

    def wait_for(self, key: str, timeout: float = 90) -> dict[str, str]:
        # (A bound: READY took >30 s once, the suite on parallel workers.)
        deadline = time.monotonic() + timeout
        while True:
            fields = self.next(max(0.1, deadline - time.monotonic()))
            if key in fields:
                return fields

    def close(self) -> None:
        self.sock.close()


def readyz(url: str, timeout: float = 1.0) -> int | None:
    """/readyz's status right now, or None when nothing answers in time."""
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=timeout) as reply:
            return reply.status
    except urllib.error.HTTPError as ex:
        return ex.code
    except OSError:
        return None


class Stream:
    """One streaming /api/chat read line by line on a thread."""

    def __init__(self, url: str):
        body = json.dumps(
            {
                "model": "llama3.2:3b",
                "messages": [{"role": "user", "content": "tell me a long story"}],
            }
        ).encode()
        self.reply = urllib.request.urlopen(
            urllib.request.Request(url + "/api/chat", data=body), timeout=30
        )
        self.first = json.loads(self.reply.readline())
        self.lines: list[dict] = [self.first]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.reply:
                if line.strip():
                    self.lines.append(json.loads(line))
        except BaseException as ex:  # noqa: BLE001 - reported by finished()
            self.error = ex

    def finished(self, timeout: float = 30) -> list[dict]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stream still running"
        assert self.error is None, f"stream broke: {self.error!r}"
        return self.lines


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple]:
    """A sim node at 8 tokens/s (streams of 1-5 s), and `herd serve` on it."""
    sim = start_sim("gpu-a", tps=8)
    notes = Notifications(tmp_path / "notify.sock")
    state = tmp_path / "state"
    apply(state, manifest([sim]))
    port = free_port()
    env = {
        **os.environ,
        "HERD_STATE_DIR": str(state),
        "NOTIFY_SOCKET": str(notes.path),
        "HERD_KEEPALIVE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "router.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "herd", "serve", "--bind", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}", notes, sim
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sim.kill()
        notes.close()
        log.close()


def test_ready_only_once_readyz_answers_200(served) -> None:
    proc, url, notes, _ = served
    ready = notes.wait_for("READY")
    # The moment systemd hears READY=1, a client gets a ready router.
    assert readyz(url) == 200
    assert ready["READY"] == "1"
    assert "serving revision 1, 1 node(s) up" in ready["STATUS"]
    # Exactly one READY=1: gunicorn's own (sent before any worker) is gone.
    assert [m for m in notes.messages if "READY" in m] == [ready]


def test_reload_rereads_revision_and_keeps_running_stream(served, tmp_path) -> None:
    proc, url, notes, sim = served
    notes.wait_for("READY")
    stream = Stream(url)
    # A new revision, then `systemctl reload`.
    new = manifest([sim]).replace("test-fleet", "test-fleet-2")
    assert apply(tmp_path / "state", new) == 2
    proc.send_signal(signal.SIGHUP)
    reloading = notes.wait_for("RELOADING", timeout=10)
    assert reloading["RELOADING"] == "1"
    assert int(reloading["MONOTONIC_USEC"]) > 0
    ready = notes.wait_for("READY", timeout=15)
    assert "serving revision 2" in ready["STATUS"]
    assert _get(url + "/readyz")[1]["revision"] == 2
    lines = stream.finished()
    assert lines[-1]["done"] is True and len(lines) > 2
    assert proc.poll() is None


def test_stop_drains_running_stream(served) -> None:
    proc, url, notes, _ = served
    notes.wait_for("READY")
    stream = Stream(url)
    proc.send_signal(signal.SIGTERM)
    stopping = notes.wait_for("STOPPING", timeout=10)
    assert stopping["STOPPING"] == "1"
    lines = stream.finished(timeout=30)
    assert lines[-1]["done"] is True and len(lines) > 2
    # The stream finished inside the bound (graceful_timeout, 30 s), and the
    # router exits cleanly once it is drained.
    assert proc.wait(35) == 0


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as ex:
        return ex.code, json.loads(ex.read())


def test_notify_sends_one_datagram_also_to_abstract_sockets(tmp_path) -> None:
    from herd.router.readiness import notify

    name = f"@herd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        sock.settimeout(5)
        assert notify(name, "READY=1", "STATUS=ok")
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"
    assert not notify(None, "READY=1")  # not under systemd: nothing to do
    assert not notify(str(tmp_path / "nobody-listens"), "READY=1")


def test_ready_rules() -> None:
    from herd.router.readiness import ANY, _ready

    # Start: a node up, or the worker answered and the node wait is over.
    assert _ready(200, {"revision": 1}, None, 0.0)
    assert not _ready(503, {"revision": 1}, None, 1.0)
    assert _ready(503, {"revision": 1}, None, 10.0)
    # Reload: the applied revision is served, or it was refused.
    assert not _ready(200, {"revision": 1}, 2, 0.5)
    assert _ready(503, {"revision": 2}, 2, 0.0)
    assert not _ready(200, {"revision": 1, "reload_refused": True}, 2, 0.2)
    assert _ready(200, {"revision": 1, "reload_refused": True}, 2, 1.5)
    assert _ready(200, {}, ANY, 0.0)
