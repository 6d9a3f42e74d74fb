"""mDNS between two network namespaces: herd's router and agent, and the
independent `zeroconf` implementation on the other side."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.discovery.agentkit import make_key
from tests.discovery.netns import A_ADDR, B_ADDR, SUBNET, NetPair
from tests.router.routerproc import ROOT, apply

pytestmark = pytest.mark.e2e
PORT = 11435


def manifest(key: Path, *, enabled: bool = True, timeout_s: float = 3) -> str:
    doc = {
        "apiVersion": "herd/v1",
        "kind": "Fleet",
        "metadata": {"name": "netns-fleet"},
        "router": {
            "listen": f"{A_ADDR}:{PORT}",
            "node_networks": [SUBNET],
            "clients": [{"name": "lan", "networks": [SUBNET], "operator": True}],
            "limits": {"connect_timeout_s": 1, "first_byte_timeout_s": 5},
        },
        "nodes": [],
        "discovery": {
            "node_keys": str(key),
            "heartbeat_timeout_s": timeout_s,
            "mdns": {
                "enabled": enabled,
                "networks": [SUBNET],
                "defaults": {"labels": {"pool": "agents"}},
            },
        },
        "models": [{"name": "qwen3:0.6b", "place": {"labels": {"pool": "agents"}}}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


class NsRouter:
    def __init__(self, pair: NetPair, state: Path, text: str, log: Path):
        apply(state, text)
        self.pair, self.log_path = pair, log
        env = {"HERD_STATE_DIR": str(state), "HERD_KEEPALIVE": "1"}
        self.proc = pair.popen(
            pair.a,
            ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m",
             "herd", "serve", "--bind", f"{A_ADDR}:{PORT}"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 90  # a bound: busy machines start slowly
        while time.monotonic() < deadline:
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"router did not start: {self.log()}")

    def get(self, path: str) -> tuple[int, Any]:
        def fetch() -> tuple[int, Any]:
            url = f"http://{A_ADDR}:{PORT}{path}"
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status, json.loads(reply.read() or b"null")

        return self.pair.call(self.pair.a, fetch)

    def chat(self) -> tuple[int, str | None]:
        def post() -> tuple[int, str | None]:
            data = json.dumps(
                {"model": "qwen3:0.6b", "stream": False,
                 "messages": [{"role": "user", "content": "hi"}]}
            ).encode()  # fmt: skip
            req = urllib.request.Request(
                f"http://{A_ADDR}:{PORT}/api/chat", data=data, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as reply:
                    reply.read()
                    return reply.status, reply.headers.get("X-Herd-Node")
            except urllib.error.HTTPError as ex:
                return ex.code, None

        return self.pair.call(self.pair.a, post)

    def nodes(self) -> dict[str, Any]:
        return {n["name"]: n for n in self.get("/fleet/nodes")[1]["nodes"]}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_for(predicate, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def zeroconf(pair: NetPair, ns: str, script: str, timeout: float = 40) -> Any:
    """Run a zeroconf script in `ns`; it prints one JSON document."""
    code = textwrap.dedent(script)
    out = pair.run(ns, [sys.executable, "-c", code], timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def ns_router(netpair, tmp_path):
    started: list[NsRouter] = []

    def make(text: str) -> NsRouter:
        r = NsRouter(netpair, tmp_path / "state", text, tmp_path / "router.log")
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def test_zeroconf_resolves_the_routers_announcement(netpair, ns_router, tmp_path):
    key = make_key(tmp_path)
    ns_router(manifest(tmp_path / "fleet.key"))
    info = zeroconf(
        netpair,
        netpair.b,
        f"""
        import json, time
        from zeroconf import Zeroconf, ServiceBrowser, ServiceListener
        zc = Zeroconf(interfaces=["{B_ADDR}"])
        names = []
        class L(ServiceListener):
            def add_service(self, zc, type_, name): names.append(name)
            def update_service(self, zc, type_, name): pass
            def remove_service(self, zc, type_, name): pass
        ServiceBrowser(zc, "_herd._tcp.local.", L())
        deadline = time.monotonic() + 20
        while not names and time.monotonic() < deadline:
            time.sleep(0.1)
        info = zc.get_service_info("_herd._tcp.local.", names[0], timeout=5000)
        print(json.dumps({{"name": names[0], "port": info.port,
            "addresses": info.parsed_addresses(),
            "txt": {{k.decode(): (v or b"").decode()
                    for k, v in info.properties.items()}}}}))
        zc.close()
        """,
    )
    assert info["name"] == "herd netns-fleet._herd._tcp.local."
    assert info["port"] == PORT
    assert info["addresses"] == [A_ADDR]
    assert info["txt"]["fp"] == key.fingerprint
    assert info["txt"]["heartbeat"] == "/fleet/heartbeat"
    assert info["txt"]["path"] == "/"


def test_router_lists_a_node_that_zeroconf_registers(netpair, ns_router, tmp_path):
    make_key(tmp_path)
    r = ns_router(manifest(tmp_path / "fleet.key"))
    registrar = netpair.popen(
        netpair.b,
        [sys.executable, "-c", textwrap.dedent(f"""
            import socket, time
            from zeroconf import Zeroconf, ServiceInfo
            zc = Zeroconf(interfaces=["{B_ADDR}"])
            info = ServiceInfo("_herd-node._tcp.local.",
                "zc-node._herd-node._tcp.local.",
                addresses=[socket.inet_aton("{B_ADDR}")], port=11434,
                properties={{"url": "http://{B_ADDR}:11434"}}, server="zc-node.local.")
            zc.register_service(info)
            print("registered", flush=True)
            time.sleep(60)
            """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert registrar.stdout.readline().strip() == "registered"

        def listed() -> bool:
            found = r.get("/fleet/status")[1]["discovery"]["candidates"]
            return any(c["name"] == "zc-node" for c in found)

        assert wait_for(listed, timeout=20), r.get("/fleet/status")[1]["discovery"]
        found = r.get("/fleet/status")[1]["discovery"]["candidates"]
        zc_node = next(c for c in found if c["name"] == "zc-node")
        assert zc_node["addresses"] == [B_ADDR] and zc_node["port"] == 11434
        assert zc_node["txt"]["url"] == f"http://{B_ADDR}:11434"
        # Announced is not admitted: no signed heartbeat, so not a node.
        assert zc_node["admitted"] is False
        assert "zc-node" not in r.nodes()
    finally:
        registrar.kill()
        registrar.wait(5)


def start_agent(pair: NetPair, key: Path, sim_port: int, name: str) -> subprocess.Popen:
    return pair.popen(
        pair.b,
        [sys.executable, "-m", "herd", "node", "--ollama",
         f"http://127.0.0.1:{sim_port}", "--key", str(key), "--name", name,
         "--interval", "1", "--lan-proxy", f"{B_ADDR}:11500"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip


def test_agent_finds_router_by_mdns_joins_serves_and_leaves(
    netpair, ns_router, tmp_path
):
    make_key(tmp_path)
    r = ns_router(manifest(tmp_path / "fleet.key", timeout_s=3))
    sim = netpair.popen(
        netpair.b,
        [sys.executable, "-m", "herd", "sim", "--host", "127.0.0.1", "--port", "11434",
         "--models", "qwen3:0.6b"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    agent = start_agent(netpair, tmp_path / "fleet.key", 11434, "gpu-x")
    try:
        assert " on " in sim.stdout.readline()
        assert wait_for(lambda: "gpu-x" in r.nodes(), timeout=30), r.log()
        node = r.nodes()["gpu-x"]
        assert node["found"] == "mdns"
        assert node["url"] == f"http://{B_ADDR}:11500"  # the LAN proxy
        assert node["labels"] == {"pool": "agents"}
        assert r.chat() == (200, "gpu-x")
        candidates = r.get("/fleet/status")[1]["discovery"]["candidates"]
        assert any(c["name"] == "gpu-x" and c["admitted"] for c in candidates)

        # SIGTERM: goodbye, gone within one heartbeat interval.
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
        began = time.monotonic()
        assert wait_for(lambda: "gpu-x" not in r.nodes(), timeout=5)
        assert time.monotonic() - began < 2
        assert r.chat()[0] == 503

        # kill -9: gone within heartbeat_timeout_s (3 s).
        agent = start_agent(netpair, tmp_path / "fleet.key", 11434, "gpu-x")
        assert wait_for(lambda: "gpu-x" in r.nodes(), timeout=30), r.log()
        agent.kill()
        agent.wait(5)
        assert wait_for(lambda: "gpu-x" not in r.nodes(), timeout=8)
    finally:
        for proc in (agent, sim):
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


def test_lan_proxy_admits_only_the_router(netpair, ns_router, tmp_path):
    make_key(tmp_path)
    r = ns_router(manifest(tmp_path / "fleet.key"))
    netpair.add_address(netpair.a, "10.77.0.3")
    sim = netpair.popen(
        netpair.b,
        [sys.executable, "-m", "herd", "sim", "--host", "127.0.0.1", "--port", "11434"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    agent = start_agent(netpair, tmp_path / "fleet.key", 11434, "gpu-y")
    try:
        assert " on " in sim.stdout.readline()
        assert wait_for(lambda: "gpu-y" in r.nodes(), timeout=30), r.log()

        def version_from(source: str) -> bytes:
            import socket

            with socket.create_connection(
                (B_ADDR, 11500), timeout=5, source_address=(source, 0)
            ) as sock:
                sock.sendall(b"GET /api/version HTTP/1.0\r\nHost: localhost\r\n\r\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        assert b'"version"' in netpair.call(netpair.a, version_from, A_ADDR)
        try:
            refused = netpair.call(netpair.a, version_from, "10.77.0.3")
        except ConnectionResetError:
            refused = b""
        assert refused == b""
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=15)
        assert "LAN proxy: refused 10.77.0.3" in out
    finally:
        for proc in (agent, sim):
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


def test_disabled_mdns_opens_no_socket_and_sends_nothing(netpair, ns_router, tmp_path):
    make_key(tmp_path)
    r = ns_router(manifest(tmp_path / "fleet.key", enabled=False))
    assert r.get("/fleet/status")[0] == 200  # background loops have started
    time.sleep(2)
    sockets = netpair.run(netpair.a, ["ss", "-uanp"])
    assert ":5353" not in sockets, sockets
    found = zeroconf(
        netpair,
        netpair.b,
        f"""
        import json, time
        from zeroconf import Zeroconf, ServiceBrowser, ServiceListener
        zc = Zeroconf(interfaces=["{B_ADDR}"])
        names = []
        class L(ServiceListener):
            def add_service(self, zc, type_, name): names.append(name)
            def update_service(self, zc, type_, name): pass
            def remove_service(self, zc, type_, name): pass
        ServiceBrowser(zc, "_herd._tcp.local.", L())
        time.sleep(4)
        print(json.dumps(names))
        zc.close()
        """,
    )
    assert found == []
