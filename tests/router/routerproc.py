"""Real processes on loopback for router tests: `herd sim` nodes and `herd serve`.

(Helpers; the pytest fixtures wrapping them are in conftest.py.)

`sims` starts simulated Ollama nodes (subprocesses, free ports); `router`
writes a manifest revision into a temporary state dir and runs the real
`herd serve` (gunicorn + gevent worker). Everything is killed in teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from herd.store import Store

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
TOKEN_SHA = hashlib.sha256(TOKEN.encode()).hexdigest()

#: The models the e2e fleet declares (each sim offers all of them).
SIM_MODELS = "llama3.2:3b,nomic-embed-text,qwen3:0.6b,llava:7b"


#: Ports tried by `start_router`: a port `free_port` found free may be taken
#: (by another test process, or as a connection's source port) before the
#: router binds it; the router then exits at once and another port is tried.
PORT_TRIES = 5


def run_script(source: str) -> subprocess.CompletedProcess[str]:
    """Run `source` in a fresh Python at the repository root (a gevent hub of
    its own, as a router worker has), its output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


class PortTaken(RuntimeError):
    """`herd serve` could not bind its port: someone took it meanwhile."""


#: Ports tests hand to servers they start, below Linux's ephemeral range
#: (32768-60999 by default), where the kernel picks connections' source ports
#: and port-0 binds: a port found free there can be taken by anyone's next
#: connection before the server binds it. Each xdist worker gets its own slice.
_PORTS_LOW, _PORTS_HIGH = 20000, 32000
_handed: set[int] = set()


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    width = (_PORTS_HIGH - _PORTS_LOW) // max(count, 1)
    start = _PORTS_LOW + (index % max(count, 1)) * width
    return range(start, start + width)


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` nothing listens on, never handed out before by this
    process, from this xdist worker's own slice (see _PORTS_LOW)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = _port_slice()
    for port in random.sample(ports, len(ports)):
        if port in _handed:
            continue
        with socket.socket(family) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


@dataclass
class Sim:
    """One `herd sim` subprocess."""

    proc: subprocess.Popen
    url: str
    name: str

    def fault(self, mode: str, **kw: Any) -> None:
        body = json.dumps({"mode": mode, **kw}).encode()
        req = urllib.request.Request(self.url + "/_sim/fault", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=5) as reply:
            assert reply.status == 200

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=5) as reply:
            return json.loads(reply.read())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_sim(
    name: str,
    tps: float = 0,
    models: str = SIM_MODELS,
    port: int = 0,
    extra: tuple[str, ...] = (),
) -> Sim:
    """`extra`: more `herd sim` flags, e.g. ("--store", DIR)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "herd",
            "sim",
            "--port",
            str(port),
            "--models",
            models,
            "--tps",
            str(tps),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    line = proc.stdout.readline()
    if " on " not in line:
        proc.kill()
        raise RuntimeError(f"herd sim did not start: {line!r}")
    url = line.split(" on ", 1)[1].split()[0]
    return Sim(proc, url, name)


def manifest(
    nodes: list[Sim],
    *,
    clients: list[dict[str, Any]] | None = None,
    limits: dict[str, Any] | None = None,
    models: list[dict[str, Any]] | None = None,
    max_concurrency: int = 8,
    listen: str = "127.0.0.1:11435",
) -> str:
    """A valid manifest document placing every model on every given node."""
    names = [n.name for n in nodes]
    doc = {
        "apiVersion": "herd/v1",
        "kind": "Fleet",
        "metadata": {"name": "test-fleet"},
        "router": {
            "listen": listen,
            "node_networks": ["127.0.0.0/8"],
            "clients": clients
            or [
                {
                    "name": "local",
                    "networks": ["127.0.0.0/8", "::1/128"],
                    "operator": True,
                }
            ],
            "limits": {
                "max_body_mb": 1,
                "request_timeout_s": 60,
                "queue_timeout_s": 2,
                "queue_depth": 4,
                "connect_timeout_s": 1,
                "first_byte_timeout_s": 2,
                "retries": 2,
                **(limits or {}),
            },
        },
        "nodes": [
            {"name": n.name, "url": n.url, "max_concurrency": max_concurrency}
            for n in nodes
        ],
        "models": models
        or [
            {"name": "llama3.2:3b", "aliases": ["fast"], "place": {"nodes": names}},
            {"name": "nomic-embed-text", "place": {"nodes": names}},
            {"name": "qwen3:0.6b", "place": {"nodes": names}},
            {"name": "llava:7b", "place": {"nodes": names}},
        ],
        "audit": {"retention_days": 30},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def apply(state_dir: Path, text: str) -> int:
    """Record `text` as the next revision (what `herd apply --yes` does)."""
    from herd.manifest import load_bytes

    load_bytes(text.encode(), "test manifest", str(state_dir))  # must be valid
    store = Store(state_dir)
    try:
        head = store.head()
        rev = store.record(
            text.encode(),
            expected_head=head.id if head else None,
            summary="test",
            source="test",
            base_dir=str(state_dir),
        )
        return rev.id if rev else head.id
    finally:
        store.close()


@dataclass
class Router:
    proc: subprocess.Popen
    url: str
    state_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, timeout: float = 5) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as reply:
                return reply.status, json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as ex:
            return ex.code, json.loads(ex.read() or b"null")

    def wait_nodes_up(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.get("/fleet/status")
            if status == 200 and body["nodes_up"] >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"fewer than {count} nodes up: {body}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_router(
    state_dir: Path,
    text: str,
    log_path: Path,
    host: str = "127.0.0.1",
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    timeout: float = 90,
) -> Router:
    """`timeout`: seconds to wait for a worker to answer (several workers
    import at once on a busy machine, and the suite runs tests in parallel:
    a start took 17 s with 2 cores shared by several test runs)."""
    apply(state_dir, text)
    for _ in range(PORT_TRIES - 1):
        try:
            return _start_router(state_dir, log_path, host, workers, extra_env, timeout)
        except PortTaken:
            continue
    return _start_router(state_dir, log_path, host, workers, extra_env, timeout)


def _start_router(
    state_dir: Path,
    log_path: Path,
    host: str,
    workers: int,
    extra_env: dict[str, str] | None,
    timeout: float,
) -> Router:
    """One try of `start_router` on a port found free just now."""
    port = free_port(host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    env = {
        **os.environ,
        "HERD_STATE_DIR": str(state_dir),
        "PYTHONUNBUFFERED": "1",
        # Idle keep-alive connections hold a graceful stop this long.
        "HERD_KEEPALIVE": "1",
        **(extra_env or {}),
    }
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "herd",
            "serve",
            "--bind",
            netloc,
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    router = Router(proc, f"http://{netloc}", state_dir, log_path, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = log_path.read_text()
            if "address already in use" in log:
                raise PortTaken(log)
            raise RuntimeError(f"herd serve exited: {log}")
        try:
            if router.get("/healthz", timeout=1)[0] == 200:
                return router
        except OSError:
            time.sleep(0.1)
    router.stop()
    raise RuntimeError(f"herd serve did not come up: {log_path.read_text()}")
