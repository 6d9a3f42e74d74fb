"""What a client group may see of the fleet: everything for operator groups,
its own models and nothing about nodes for the rest.

Every endpoint that can show fleet internals is asked both ways: /fleet/status,
/fleet/nodes, /metrics, /readyz, and the 502/503/504 error bodies of both API
families (whose node URLs and names only operators may read).
"""

from __future__ import annotations

import socket

import pytest
from falcon import testing

from herd.manifest import load_bytes
from herd.manifest.model import build_fleet
from herd.router.app import create_app
from herd.router.observe.traces import TraceLog
from herd.router.reload import StaticSource
from herd.router.routing.proxy import Upstream
from tests.router.routerproc import free_port

OPS = {"remote_addr": "127.0.0.1"}
APPS = {"remote_addr": "127.0.0.2"}
CHAT = {"messages": [{"role": "user", "content": "x"}], "stream": False}


class Fleet:
    """An in-process router over one node at `url` (dead or silent)."""

    def __init__(self, url: str, tmp_path, first_byte_s: float = 2):
        self.url = url
        self.port = url.rsplit(":", 1)[1]
        fleet = build_fleet(
            {
                "metadata": {"name": "secret-fleet"},
                "router": {
                    "clients": [
                        {"name": "ops", "networks": ["127.0.0.1/32"], "operator": True},
                        {"name": "apps", "networks": ["127.0.0.2/32"], "models": ["m"]},
                    ],
                    "limits": {"retries": 0, "first_byte_timeout_s": first_byte_s},
                },
                "nodes": [{"name": "gpu-hidden", "url": url}],
                "models": [
                    {"name": "m", "place": {"nodes": ["gpu-hidden"]}},
                    {"name": "other-secret", "place": {"nodes": ["gpu-hidden"]}},
                ],
            }
        )
        source = StaticSource(fleet)
        source.last_error = "revision 7: nodes[0].url: http://10.99.0.1:11434 broken"
        self.traces = TraceLog(tmp_path)
        app = create_app(source, self.traces, Upstream(), background=False)
        self.client = testing.TestClient(app, headers={"Host": "localhost"})

    def leaks(self, text: str) -> list[str]:
        """Fleet internals that appear in `text`."""
        secrets = [
            self.url,
            f":{self.port}",
            "gpu-hidden",
            "other-secret",
            "10.99.0.1",
            "revision 7",
        ]
        return [s for s in secrets if s in text]


@pytest.fixture
def dead(tmp_path):
    """A fleet whose only node refuses connections (502, then 503)."""
    fleet = Fleet(f"http://127.0.0.1:{free_port()}", tmp_path)
    yield fleet
    fleet.traces.close()


@pytest.fixture
def silent(tmp_path):
    """A fleet whose only node accepts connections and never answers (504)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        fleet = Fleet(f"http://127.0.0.1:{sock.getsockname()[1]}", tmp_path, 0.5)
        yield fleet
        fleet.traces.close()


def test_fleet_status_full_for_operators(dead):
    r = dead.client.simulate_get("/fleet/status", **OPS)
    assert r.status_code == 200
    assert r.json["operator"] is True
    assert r.json["nodes"][0]["url"] == dead.url
    assert {m["name"] for m in r.json["models"]} == {"m:latest", "other-secret:latest"}
    assert "10.99.0.1" in r.json["reload_error"]


def test_fleet_status_for_other_groups_shows_only_their_models(dead):
    r = dead.client.simulate_get("/fleet/status", **APPS)
    assert r.status_code == 200
    assert r.json["operator"] is False
    assert [m["name"] for m in r.json["models"]] == ["m:latest"]
    assert set(r.json["models"][0]) == {
        "name",
        "aliases",
        "fallbacks",
        "available",
        "loaded",
    }
    assert "nodes" not in r.json and "reload_error" not in r.json
    assert dead.leaks(r.text) == []


def test_fleet_nodes_for_operators_only(dead):
    r = dead.client.simulate_get("/fleet/nodes", **OPS)
    assert r.status_code == 200 and r.json["nodes"][0]["url"] == dead.url
    r = dead.client.simulate_get("/fleet/nodes", **APPS)
    assert r.status_code == 403
    assert "operator" in r.json["error"]
    assert dead.leaks(r.text) == []


def test_metrics_for_operators_only(dead):
    r = dead.client.simulate_get("/metrics", **OPS)
    assert r.status_code == 200 and 'herd_node_up{node="gpu-hidden"}' in r.text
    r = dead.client.simulate_get("/metrics", **APPS)
    assert r.status_code == 403
    assert dead.leaks(r.text) == []


def test_readyz_names_no_node(dead):
    for who in (OPS, APPS, {"remote_addr": "10.9.9.9"}):
        r = dead.client.simulate_get("/readyz", **who)
        assert r.status_code in (200, 503)
        assert dead.leaks(r.text) == []


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_502_and_503_bodies_name_no_node_for_other_groups(dead, path):
    r = dead.client.simulate_post(path, json={**CHAT, "model": "m"}, **APPS)
    assert r.status_code == 502
    assert "refused" in r.text
    assert dead.leaks(r.text) == []
    # The refusal marked the node down: now no healthy node (503).
    r = dead.client.simulate_post(path, json={**CHAT, "model": "m"}, **APPS)
    assert r.status_code == 503
    assert dead.leaks(r.text) == []


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_502_and_503_bodies_name_the_node_for_operators(dead, path):
    r = dead.client.simulate_post(path, json={**CHAT, "model": "m"}, **OPS)
    assert r.status_code == 502
    assert "gpu-hidden" in r.text and dead.url in r.text
    r = dead.client.simulate_post(path, json={**CHAT, "model": "m"}, **OPS)
    assert r.status_code == 503 and "gpu-hidden" in r.text


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_504_body_names_no_node_for_other_groups(silent, path):
    r = silent.client.simulate_post(path, json={**CHAT, "model": "m"}, **APPS)
    assert r.status_code == 504
    assert "in time" in r.text
    assert silent.leaks(r.text) == []


def test_504_body_names_the_node_for_operators(silent):
    r = silent.client.simulate_post("/api/chat", json={**CHAT, "model": "m"}, **OPS)
    assert r.status_code == 504
    assert "gpu-hidden" in r.text and silent.url in r.text


def test_operator_key_in_the_manifest():
    text = """\
apiVersion: herd/v1
kind: Fleet
metadata: {name: f}
router:
  clients:
    - {name: admins, networks: [10.0.0.0/24], operator: true}
    - {name: apps, networks: [10.1.0.0/24]}
nodes: [{name: n, url: "http://10.2.0.1:11434"}]
models: [{name: m, place: {nodes: [n]}}]
"""
    fleet = load_bytes(text.encode(), "f.yaml")
    assert [c.operator for c in fleet.router.clients] == [True, False]
    bad = text.replace("operator: true", "operator: 'yes'")
    with pytest.raises(Exception) as info:
        load_bytes(bad.encode(), "f.yaml")
    assert "router.clients[0].operator" in str(info.value)
