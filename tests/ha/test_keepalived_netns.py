"""Two routers on real keepalived in network namespaces: failover and failback.

A bridge joins five namespaces: routers r1 and r2 (each `herd serve` and
keepalived with the configuration `herd apply` wrote from the same
manifest), two `herd sim` nodes and a client that streams chats through the
virtual address with the official `ollama` client. Killing r1's router makes
keepalived move the address to r2 (its /readyz check fails); new requests
succeed there within 3 s. When r1's router returns, r1 takes the address back
(higher priority, preemption). Nothing leaves the namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from herd.bundle.importer import import_bundle
from herd.bundle.policy import resolve
from herd.store import Store
from tests.discovery.netns import unavailable
from tests.ha.lan import Lan
from tests.router.routerproc import ROOT

pytestmark = pytest.mark.e2e

VIP = "10.88.0.10"
HOSTS = {
    "r1": "10.88.0.11",
    "r2": "10.88.0.12",
    "n1": "10.88.0.21",
    "n2": "10.88.0.22",
    "client": "10.88.0.30",
}
PORT = 11435
MODEL = "qwen3:0.6b"
#: What the issue asks: new requests succeed through the backup within 3 s.
FAILOVER_S = 3.0


def _skip_reason() -> str | None:
    if shutil.which("keepalived") is None:
        return "keepalived is not installed (apt-get install keepalived)"
    if shutil.which("curl") is None:
        return "curl is not installed (keepalived's readiness check runs it)"
    return unavailable()


def manifest(secret: Path) -> str:
    doc = {
        "apiVersion": "herd/v1",
        "kind": "Fleet",
        "metadata": {"name": "ha-fleet"},
        "router": {
            "listen": f"0.0.0.0:{PORT}",
            "node_networks": ["10.88.0.0/24"],
            "clients": [
                {"name": "lan", "networks": ["10.88.0.0/24"], "operator": True},
                {"name": "local", "networks": ["127.0.0.0/8"], "operator": True},
            ],
            "limits": {"connect_timeout_s": 1, "first_byte_timeout_s": 5},
            "ha": {
                "virtual_address": VIP,
                "interface": "eth0",
                "peers": [HOSTS["r1"], HOSTS["r2"]],
                "priority": 150,
                "virtual_router_id": 88,
                "auth_secret_file": str(secret),
            },
        },
        "nodes": [{"name": n, "url": f"http://{HOSTS[n]}:11434"} for n in ("n1", "n2")],
        "models": [{"name": MODEL, "place": {"nodes": ["n1", "n2"]}}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


CLIENT = textwrap.dedent(
    """
    import json, os, sys, time
    import httpx, ollama
    stop, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
    # A SYN lost while the address moves is retried by a new request, not by
    # the kernel's 1 s retransmit: new requests are what the test times.
    client = ollama.Client(host="http://{vip}:{port}",
                           timeout=httpx.Timeout(3.0, connect=0.5))
    while time.monotonic() < deadline and not os.path.exists(stop):
        started, row = time.time(), {{}}
        try:
            parts = list(client.chat(model="{model}", stream=True,
                                     messages=[{{"role": "user", "content": "hi"}}]))
            row = {{"ok": bool(parts) and parts[-1].done, "chunks": len(parts)}}
        except Exception as ex:
            row = {{"ok": False, "error": type(ex).__name__}}
        print(json.dumps({{"t": started, "end": time.time(), **row}}), flush=True)
        time.sleep(0.1)
    """
).format(vip=VIP, port=PORT, model=MODEL)


class Site:
    """The processes of the test LAN, each stopped in teardown."""

    def __init__(self, lan: Lan, tmp: Path):
        self.lan, self.tmp = lan, tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, host: str, argv: list[str], **env: str) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        envs = [f"{k}={v}" for k, v in env.items()]
        self.procs[name] = self.lan.popen(
            host,
            ["env", *envs, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def router(self, host: str) -> None:
        self.start(
            f"router-{host}",
            host,
            [sys.executable, "-m", "herd", "serve"],
            HERD_STATE_DIR=str(self.tmp / host),
        )

    def ready(self, host: str) -> bool:
        done = self.lan.run(
            host,
            ["curl", "-fsS", "-m", "2", f"http://127.0.0.1:{PORT}/readyz"],
            timeout=10,
        )
        return done.returncode == 0

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Both routers applied, serving and under keepalived; r1 holds the address."""
    reason = _skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the keepalived test: {reason}")
        pytest.skip(reason)
    tmp_path = tmp_path_factory.mktemp("ha")
    lan = Lan.create(HOSTS)
    site = Site(lan, tmp_path)
    try:
        secret = tmp_path / "vrrp.secret"
        secret.write_text("herdvrrp\n")
        secret.chmod(0o600)
        fleet = tmp_path / "fleet.yaml"
        fleet.write_text(manifest(secret))
        for host, priority in (("r1", 150), ("r2", 140)):
            conf = tmp_path / f"keepalived-{host}.conf"
            done = lan.run(
                host,
                ["env", f"HERD_STATE_DIR={tmp_path / host}",
                 f"HERD_KEEPALIVED_CONF={conf}", "HERD_APPLY_NODES=0",
                 sys.executable, "-m", "herd", "apply", "--yes", str(fleet)],
                cwd=ROOT,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            text = conf.read_text()
            # The same manifest, but each router found itself among the peers.
            assert f"unicast_src_ip {HOSTS[host]}" in text
            assert f"priority {priority}" in text
            assert f"{VIP}/32 dev eth0" in text
            assert oct(conf.stat().st_mode & 0o777) == "0o600"  # it holds the secret
        for node in ("n1", "n2"):
            site.start(
                f"sim-{node}",
                node,
                [sys.executable, "-m", "herd", "sim", "--host", HOSTS[node],
                 "--port", "11434", "--models", MODEL, "--tps", "40", "--tokens", "8"],
            )  # fmt: skip
        for host in ("r1", "r2"):
            site.router(host)
        for host in ("r1", "r2"):
            assert wait_for(lambda h=host: site.ready(h), 40, 0.3), site.log(
                f"router-{host}"
            )
            site.start(
                f"keepalived-{host}",
                host,
                ["keepalived", "-n", "-l", "-P",
                 "-f", str(tmp_path / f"keepalived-{host}.conf"),
                 "-p", str(tmp_path / f"ka-{host}.pid"),
                 "-r", str(tmp_path / f"ka-vrrp-{host}.pid")],
            )  # fmt: skip
        assert wait_for(lambda: lan.holds("r1", VIP), 20), site.log("keepalived-r1")
        assert not lan.holds("r2", VIP)

        yield site
    finally:
        for name in list(site.procs):
            site.kill(name)
        lan.destroy()


def test_virtual_address_fails_over_and_back(site):
    lan, tmp_path = site.lan, site.tmp
    stop, out = tmp_path / "stop-client", tmp_path / "client.jsonl"
    client = lan.popen(
        "client",
        [sys.executable, "-c", CLIENT, str(stop), "90"],
        stdout=out.open("wb"),
        stderr=(tmp_path / "client.err").open("wb"),
        cwd=ROOT,
    )
    try:
        assert wait_for(lambda: sum(r["ok"] for r in rows(out)) >= 3, 20), (
            rows(out),
            (tmp_path / "client.err").read_text()[-2000:],
        )
        # The master's router dies: keepalived's readiness check fails there.
        killed = time.time()
        site.kill("router-r1")
        assert wait_for(lambda: lan.holds("r2", VIP), 10), site.log("keepalived-r2")

        def recovered() -> list[dict]:
            return [r for r in rows(out) if r["t"] >= killed and r["ok"]]

        assert wait_for(lambda: len(recovered()) >= 3, 15), rows(out)[-20:]
        first = recovered()[0]
        took = first["end"] - killed
        print(f"failover: first request through the backup done {took:.2f} s later")
        assert first["end"] - killed <= FAILOVER_S, rows(out)[-30:]
        after = [r for r in rows(out) if r["t"] >= first["t"]]
        assert all(r["ok"] for r in after), after

        # The master's router returns: r1 takes the address back.
        site.router("r1")
        assert wait_for(lambda: lan.holds("r1", VIP), 30), site.log("keepalived-r1")
        back = time.time()
        assert wait_for(lambda: lan.holds("r1", VIP) and not lan.holds("r2", VIP), 5)
        assert wait_for(
            lambda: sum(r["ok"] for r in rows(out) if r["t"] >= back + 0.5) >= 3, 15
        ), rows(out)[-20:]
        settled = [r for r in rows(out) if r["t"] >= back + 0.5]
        assert all(r["ok"] for r in settled), settled
    finally:
        stop.touch()
        try:
            client.wait(15)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait(5)


def test_status_shows_the_peer_and_bundles_come_from_it(site):
    """Through the real gate: r2 may read r1's registry as a router.ha peer."""
    lan, tmp_path = site.lan, site.tmp
    signers = ROOT / "tests" / "bundle" / "keys" / "allowed_signers"

    def herd(host: str, *args: str) -> subprocess.CompletedProcess:
        env = [f"HERD_STATE_DIR={tmp_path / host}"]
        argv = ["env", *env, sys.executable, "-m", "herd", *args]
        return lan.run(host, argv, cwd=ROOT)

    done = herd("r1", "status", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (peer,) = report["ha_peers"]
    assert peer["address"] == HOSTS["r2"] and peer["same_revision"] is True
    assert peer["sha256"] == report["sha256"]

    # r1 imported the example bundle from a stick (in-process, its state dir).
    state = Store(tmp_path / "r1")
    try:
        policy = resolve(tmp_path / "r1", manifest=None, trusted_signers=signers)
        import_bundle(ROOT / "bundles" / "example", policy, state)
    finally:
        state.close()
    done = herd("r2", "bundle", "import", "--from-peer",
                f"http://{HOSTS['r1']}:{PORT}", "example",
                "--trusted-signers", str(signers), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["models"] == ["tiny:latest"]
    # The client's address is neither a node nor a peer router: refused.
    done = lan.run(
        "client",
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5",
         f"http://{HOSTS['r1']}:{PORT}/v2/_herd/bundles/example/bundle.yaml"],
    )  # fmt: skip
    assert done.stdout == "403", (done.stdout, done.stderr)
