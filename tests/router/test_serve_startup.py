"""`herd serve` start-up: bad arguments are one line and exit 1; banner means serving.

Each bad argument must be refused before gunicorn starts (no retries, no
server that listens and never answers), and "router on http://..." may only
be printed once a worker answers on that address.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.router.routerproc import ROOT, apply, free_port, manifest

NODE = type("N", (), {"name": "n1", "url": "http://127.0.0.1:9"})


@pytest.fixture
def applied(state_dir: Path) -> Path:
    apply(state_dir, manifest([NODE], listen="127.0.0.1:9"))
    return state_dir


def one_line_refusal(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("herd serve: "), out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr
    assert "router on" not in out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "env", "needles"),
    [
        (["--workers", "0"], {}, ["--workers", "1 or more", "got 0"]),
        (["--workers", "-3"], {}, ["--workers", "got -3"]),
        ([], {"HERD_WORKERS": "0"}, ["HERD_WORKERS", "got 0"]),
        (["--config", "/missing/gunicorn.conf.py"], {}, ["/missing", "no such file"]),
        ([], {"HERD_GUNICORN_CONF": "/missing.py"}, ["HERD_GUNICORN_CONF"]),
        (["--config", "/tmp"], {}, ["/tmp", "not a file"]),
        (["--bind", "notaport"], {}, ["'notaport'", "HOST:PORT"]),
        (["--bind", "127.0.0.1"], {}, ["HOST:PORT"]),
        (["--bind", "127.0.0.1:http"], {}, ["port must be a number"]),
        (["--bind", "127.0.0.1:0"], {}, ["port must be a number"]),
        (["--bind", "127.0.0.1:70000"], {}, ["1 to 65535"]),
        (["--bind", "::1:8000"], {}, ["[]"]),
        (["--bind", "unix:/tmp/herd.sock"], {}, ["HOST:PORT"]),
        (["--bind", "no-such-host.invalid:8000"], {}, ["/etc/hosts", "DNS"]),
        ([], {"HERD_BIND": "notaport"}, ["HERD_BIND", "'notaport'"]),
        ([], {"HERD_BLOB_SENDER": "fast"}, ["HERD_BLOB_SENDER", "idle, nice, off"]),
    ],
)
def test_bad_arguments_are_one_line_and_exit_1(herd, applied, args, env, needles):
    one_line_refusal(herd("serve", *args, env=env, timeout=30), *needles)


def test_a_port_in_use_is_one_line_without_gunicorn_retries(herd, applied):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = herd("serve", "--bind", f"127.0.0.1:{port}", timeout=30)
    one_line_refusal(out, f"127.0.0.1:{port}", "address already in use")


def _serve(state_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HERD_STATE_DIR": str(state_dir), "HERD_KEEPALIVE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "herd", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_the_banner_is_printed_only_once_a_worker_answers(applied):
    port = free_port()
    proc = _serve(applied, "--bind", f"127.0.0.1:{port}")
    try:
        line = proc.stdout.readline()
        assert f"router on http://127.0.0.1:{port}" in line, line
        # The very moment the banner is out, the router must answer.
        url = f"http://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200
    finally:
        proc.terminate()
        proc.wait(30)
    # SIGTERM to `herd serve` reaches gunicorn: the port is free again.
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_a_killed_herd_serve_leaves_no_gunicorn_serving(applied):
    """SIGKILL cannot be forwarded: gunicorn must notice its parent died."""
    port = free_port()
    proc = _serve(applied, "--bind", f"127.0.0.1:{port}")
    try:
        assert "router on" in proc.stdout.readline()
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        master = int(children.read_text().split()[0])
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{master}").exists() and _state(master) != "Z":
            assert time.monotonic() < deadline, "gunicorn outlived herd serve"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_router_that_never_serves_prints_no_banner_and_exits_1(applied, tmp_path):
    conf = tmp_path / "broken.conf.py"
    conf.write_text(
        (ROOT / "etc" / "gunicorn.conf.py").read_text()
        + '\nwsgi_app = "herd_no_such_module:app"\n'
    )
    proc = _serve(applied, "--bind", f"127.0.0.1:{free_port()}", "--config", str(conf))
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "router on" not in out
    assert err.rstrip().splitlines()[-1].startswith("herd serve: the router exited")
