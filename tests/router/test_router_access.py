"""Who may read the registry (/v2), and the caller's address normalized once.

The registry hands out model weights: only the fleet's nodes (their URLs'
addresses) may read it, never a client group, whatever models the group may
use. On a dual-stack bind (`[::]`) IPv4 callers arrive as `::ffff:a.b.c.d`;
they must match IPv4 client networks and node addresses all the same, and be
logged as plain IPv4.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from falcon import testing

from herd.manifest.model import build_fleet
from herd.router.app import create_app
from herd.router.http.peer import peer_address
from herd.router.observe.traces import TraceLog
from herd.router.reload import StaticSource
from herd.router.routing.proxy import Upstream
from tests.router.routerproc import ROOT, free_port, manifest

EXAMPLE = ROOT / "bundles" / "example"
MANIFEST_PATH = "/v2/library/tiny/manifests/latest"


def fill_store(store: Path) -> bytes:
    """The example bundle's model laid out as the bundle store holds it."""
    raw = (EXAMPLE / "manifests" / "tiny" / "latest").read_bytes()
    target = store / "manifests" / "registry.ollama.ai" / "library" / "tiny"
    target.mkdir(parents=True)
    (target / "latest").write_bytes(raw)
    shutil.copytree(EXAMPLE / "blobs", store / "blobs")
    return raw


@pytest.fixture
def registry_app(tmp_path):
    raw = fill_store(tmp_path / "store")
    fleet = build_fleet(
        {
            "metadata": {"name": "pulls"},
            "router": {
                "clients": [
                    {
                        "name": "embed-only",
                        "networks": ["127.0.0.5/32"],
                        "models": ["e"],
                    },
                    {"name": "ops", "networks": ["127.0.0.6/32"], "operator": True},
                ],
            },
            "nodes": [
                {"name": "n1", "url": f"http://127.0.0.1:{free_port()}"},
                {"name": "n6", "url": "http://[fd00::6]:11434"},
            ],
            "models": [
                {"name": "e", "place": {"nodes": ["n1"]}},
                {"name": "tiny", "place": {"nodes": ["n1"]}},
            ],
        }
    )
    traces = TraceLog(None)
    app = create_app(
        StaticSource(fleet),
        traces,
        Upstream(),
        background=False,
        bundle_store=lambda: tmp_path / "store",
    )
    yield testing.TestClient(app, headers={"Host": "localhost"}), raw


def test_nodes_pull_from_the_registry(registry_app):
    c, raw = registry_app
    for node in ("127.0.0.1", "::ffff:127.0.0.1", "fd00::6"):
        got = c.simulate_get(MANIFEST_PATH, remote_addr=node)
        assert got.status_code == 200, node
        assert got.content == raw
        layer = json.loads(raw)["layers"][0]
        head = c.simulate_head(
            f"/v2/library/tiny/blobs/{layer['digest']}", remote_addr=node
        )
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == layer["size"]


@pytest.mark.parametrize("who", ["127.0.0.5", "127.0.0.6", "::ffff:127.0.0.5"])
def test_client_groups_get_registry_shaped_403(registry_app, who):
    """A group allowed only an embedding model (or even an operator group) may
    not pull weights: 403 in the registry's own error shape."""
    c, raw = registry_app
    layer = json.loads(raw)["layers"][0]
    for path in (
        "/v2",
        "/v2/",
        MANIFEST_PATH,
        f"/v2/library/tiny/blobs/{layer['digest']}",
    ):
        got = c.simulate_get(path, remote_addr=who)
        assert got.status_code == 403, (who, path)
        assert set(got.json) == {"errors"}
        assert got.json["errors"][0]["code"] == "DENIED"
        assert "nodes only" in got.json["errors"][0]["message"]
        assert raw not in got.content
    head = c.simulate_head(MANIFEST_PATH, remote_addr=who)
    assert head.status_code == 403


def test_strangers_get_registry_shaped_403(registry_app):
    c, _ = registry_app
    got = c.simulate_get(MANIFEST_PATH, remote_addr="10.9.9.9")
    assert got.status_code == 403
    assert got.json["errors"][0]["code"] == "DENIED"
    assert "10.9.9.9" in got.json["errors"][0]["message"]


def test_a_node_named_in_etc_hosts_may_pull():
    from herd.hosts import hosts_table
    from herd.router.policy import Policy

    if "127.0.0.1" not in hosts_table().get("localhost", ()):
        pytest.skip("/etc/hosts does not list localhost as 127.0.0.1")
    fleet = build_fleet(
        {
            "metadata": {"name": "named"},
            "nodes": [{"name": "n", "url": "http://localhost:11434"}],
            "models": [{"name": "m", "place": {"nodes": ["n"]}}],
        }
    )
    policy = Policy(fleet)
    assert policy.may_pull("127.0.0.1")
    assert not policy.may_pull("127.0.0.2")


def test_peer_address_is_canonical():
    assert peer_address("::ffff:10.30.0.7") == "10.30.0.7"
    assert peer_address("::FFFF:127.0.0.1") == "127.0.0.1"
    assert peer_address("fe80::1%eth0") == "fe80::1"
    assert peer_address("FD00:0:0::6") == "fd00::6"
    assert peer_address("10.0.0.1") == "10.0.0.1"
    assert peer_address("") == "" and peer_address(None) == ""
    assert peer_address("not-an-ip") == "not-an-ip"


def _dual_stack() -> bool:
    """True when this host can bind [::] and take IPv4 on it (v4-mapped)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
            sock.listen(1)
            port = sock.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                peer, _ = sock.accept()
                with peer:
                    return peer.getpeername()[0].startswith("::ffff:")
    except OSError:
        return False


@pytest.mark.e2e
def test_dual_stack_bind_sees_ipv4_callers_as_ipv4(sims, router):
    """A real router on [::]; IPv4 loopback callers arrive as ::ffff:127.x."""
    if not _dual_stack():
        pytest.skip("this host has no IPv6 dual-stack sockets")
    node = sims("node-a")  # listens on 127.0.0.1: the node address
    clients = [{"name": "apps", "networks": ["127.0.0.2/32", "::1/128"]}]
    r = router(manifest([node], clients=clients), host="::")
    raw = fill_store(r.state_dir / "store")
    port = r.url.rsplit(":", 1)[1]
    base = f"http://127.0.0.1:{port}"

    def get(path: str, source: str) -> httpx.Response:
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport, timeout=10) as client:
            return client.get(base + path)

    # The node's own address (127.0.0.1, seen as ::ffff:127.0.0.1) may pull.
    pulled = get(MANIFEST_PATH, "127.0.0.1")
    assert pulled.status_code == 200, pulled.text
    assert pulled.content == raw
    # A client group matches its IPv4 network, and may not pull.
    assert get("/api/tags", "127.0.0.2").status_code == 200
    denied = get(MANIFEST_PATH, "127.0.0.2")
    assert denied.status_code == 403
    assert denied.json()["errors"][0]["code"] == "DENIED"
    # Everyone else: 403 naming the address as IPv4.
    stranger = get("/api/tags", "127.0.0.3")
    assert stranger.status_code == 403
    assert "127.0.0.3" in stranger.json()["error"]
    assert "::ffff:" not in stranger.text
    # The access log speaks IPv4 too.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [ln for ln in r.log().splitlines() if " herd.access " in ln]
        if any(" 127.0.0.3 " in ln for ln in lines):
            break
        time.sleep(0.2)
    assert any(" herd.access 127.0.0.1 node GET " in ln for ln in lines), lines
    assert any(" herd.access 127.0.0.3 - GET " in ln for ln in lines), lines
    assert not any("::ffff:" in ln for ln in lines), lines
    # And so do the traces.
    deadline = time.monotonic() + 10
    peers: set = set()
    while time.monotonic() < deadline and "127.0.0.3" not in peers:
        time.sleep(0.3)
        try:
            db = sqlite3.connect(f"file:{r.state_dir / 'traces.db'}?mode=ro", uri=True)
            with db:
                peers = {row[0] for row in db.execute("SELECT peer FROM traces")}
            db.close()
        except sqlite3.OperationalError:
            continue  # not written yet
    assert {"127.0.0.1", "127.0.0.2", "127.0.0.3"} <= peers, peers
    assert not any("::ffff:" in (p or "") for p in peers)
