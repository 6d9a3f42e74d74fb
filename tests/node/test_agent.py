"""`herd node` end to end on loopback: a real agent process, `herd sim` as its
Ollama, a real router. Admitted, routed to, gone on SIGTERM and on kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.discovery.agentkit import discovery_manifest, make_key
from tests.discovery.test_heartbeat_router import chat, node_names, wait_for
from tests.router.routerproc import ROOT

pytestmark = pytest.mark.e2e


def start_agent(router_url: str, ollama: str, key, name: str, *extra: str):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "herd",
            "node",
            "--router",
            router_url,
            "--ollama",
            ollama,
            "--key",
            str(key),
            "--name",
            name,
            "--interval",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def stop(proc) -> str:
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=10)
    return out


def test_agent_joins_reports_metrics_and_leaves_on_sigterm(tmp_path, sims, router):
    static, local = sims("static-a"), sims("ollama-of-agent")
    make_key(tmp_path)
    r = router(discovery_manifest([static], tmp_path / "fleet.key", timeout_s=30))
    agent = start_agent(r.url, local.url, tmp_path / "fleet.key", "gpu-e")
    try:
        assert wait_for(lambda: "gpu-e" in node_names(r), timeout=20), stop(agent)
        node = next(
            n for n in r.get("/fleet/nodes")[1]["nodes"] if n["name"] == "gpu-e"
        )
        assert node["url"] == local.url
        assert node["found"] == "router-flag"
        assert node["state"] == "up"
        assert "qwen3:0.6b" in node["models_on_disk"]
        metrics = node["metrics"]
        assert metrics["memory"]["total"] > metrics["memory"]["available"] > 0
        assert metrics["cpu_count"] >= 1 and "swap" in metrics
        assert chat(r, "qwen3:0.6b") == (200, "gpu-e")

        # SIGTERM: the goodbye removes it well before the 30 s timeout.
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
        began = time.monotonic()
        assert wait_for(lambda: "gpu-e" not in node_names(r), timeout=5)
        assert time.monotonic() - began < 2  # within one heartbeat interval (1 s)
        assert chat(r, "qwen3:0.6b")[0] == 503
        out = stop(agent)
        assert "goodbye sent" in out, out
    finally:
        stop(agent)


def test_killed_agent_leaves_after_the_timeout(tmp_path, sims, router):
    static, local = sims("static-a"), sims("ollama-of-agent")
    make_key(tmp_path)
    r = router(discovery_manifest([static], tmp_path / "fleet.key", timeout_s=3))
    agent = start_agent(r.url, local.url, tmp_path / "fleet.key", "gpu-f")
    try:
        assert wait_for(lambda: "gpu-f" in node_names(r), timeout=20), stop(agent)
        agent.kill()  # no goodbye
        agent.wait(10)
        assert "gpu-f" in node_names(r)
        assert wait_for(lambda: "gpu-f" not in node_names(r), timeout=10)
    finally:
        stop(agent)


def test_agent_with_the_wrong_key_is_refused(tmp_path, sims, router):
    static, local = sims("static-a"), sims("ollama-of-agent")
    make_key(tmp_path)
    make_key(tmp_path, "other.key")
    r = router(discovery_manifest([static], tmp_path / "fleet.key"))
    agent = start_agent(r.url, local.url, tmp_path / "other.key", "gpu-g")
    try:
        assert wait_for(lambda: "audit heartbeat.refused" in r.log(), timeout=20)
        assert "gpu-g" not in node_names(r)
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
        assert "bad signature" in stop(agent)
    finally:
        stop(agent)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--router", "http://router.lan:11435"], "use an IP address"),
        (["--router", "ftp://10.0.0.1"], "must be http://HOST:PORT"),
        (["--lan-proxy", "10.0.0.1"], "must be ADDR:PORT"),
        (["--key", "/nonexistent/fleet.key"], "cannot read fleet key"),
    ],
)
def test_bad_flags_are_one_line_and_exit_1(tmp_path, argv, message):
    make_key(tmp_path)
    args = ["--key", str(tmp_path / "fleet.key"), "--router", "http://127.0.0.1:9"]
    done = subprocess.run(
        [sys.executable, "-m", "herd", "node", *args, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
