"""Drift on the dashboard: herd.reconcile's planner over the router's own view
of the nodes (what `herd plan` would do), with no request to any node."""

from __future__ import annotations

from types import SimpleNamespace

import yaml

from herd.dashboard.api import drift
from herd.discovery.health import NodeHealth
from herd.manifest import load_bytes
from herd.reconcile.actions import Imported

DOC = {
    "apiVersion": "herd/v1",
    "kind": "Fleet",
    "metadata": {"name": "drift"},
    "router": {
        "listen": "127.0.0.1:11435",
        "clients": [{"name": "ops", "networks": ["127.0.0.0/8"], "operator": True}],
    },
    "nodes": [
        {"name": "a", "url": "http://127.0.0.1:9001"},
        {"name": "b", "url": "http://127.0.0.1:9002"},
        {"name": "c", "url": "http://127.0.0.1:9003"},
    ],
    "models": [
        {"name": "llama3.2:3b", "place": {"nodes": ["a", "b"]}, "keep_loaded": "1h"},
        {"name": "qwen3:0.6b", "place": {"nodes": ["a"]}, "bundle": "base"},
    ],
}


def runtime(states: dict[str, NodeHealth]) -> SimpleNamespace:
    return SimpleNamespace(poller=SimpleNamespace(get=lambda node: states[node.name]))


def test_pulls_warms_undeclared_and_unreachable():
    fleet = load_bytes(yaml.safe_dump(DOC).encode())
    states = {
        "a": NodeHealth("a", "http://127.0.0.1:9001", up=True,
                        on_disk=frozenset({"llama3.2:3b", "old:1b"})),
        "b": NodeHealth("b", "http://127.0.0.1:9002", up=True,
                        on_disk=frozenset({"llama3.2:3b"}),
                        loaded=frozenset({"llama3.2:3b"})),
        "c": NodeHealth("c", "http://127.0.0.1:9003", up=False,
                        last_error="connection refused"),
    }  # fmt: skip
    catalog = ({"qwen3:0.6b": Imported("qwen3:0.6b", "base", 500)}, {"base"})
    body = drift(runtime(states), fleet, catalog)
    nodes = {n["node"]: n for n in body["nodes"]}
    assert [p["model"] for p in nodes["a"]["pull"]] == ["qwen3:0.6b"]
    assert nodes["a"]["warm"] == ["llama3.2:3b"]  # keep_loaded, not in memory
    assert nodes["a"]["undeclared"] == ["old:1b"]
    assert nodes["b"]["pull"] == [] and nodes["b"]["warm"] == []
    assert nodes["c"]["reachable"] is False
    assert nodes["c"]["error"] == "connection refused"
    assert body["unreachable"] == ["c"] and body["undeclared"] == 1
    assert body["changes"] == 2 and body["in_sync"] is False


def test_a_model_with_no_bundle_and_no_copy_is_a_plan_error():
    fleet = load_bytes(yaml.safe_dump(DOC).encode())
    held = frozenset({"llama3.2:3b", "qwen3:0.6b"})
    states = {
        name: NodeHealth(name, f"http://127.0.0.1:900{i}", up=True, on_disk=held,
                         loaded=held)
        for i, name in enumerate("abc", 1)
    }  # fmt: skip
    assert drift(runtime(states), fleet, ({}, set()))["errors"]
    ok = drift(
        runtime(states),
        fleet,
        ({"qwen3:0.6b": Imported("qwen3:0.6b", "base", 1)}, {"base"}),
    )
    assert ok["in_sync"] is True and ok["changes"] == 0
