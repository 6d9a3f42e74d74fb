"""The revision diff counts a replicated model once, not once per matching node."""

from __future__ import annotations

import yaml

from herd.manifest.loader import load_bytes
from herd.manifest.plan import diff

DOC = {
    "apiVersion": "herd/v1",
    "kind": "Fleet",
    "metadata": {"name": "t"},
    "router": {"node_networks": ["127.0.0.0/8"]},
    "nodes": [
        {"name": "a", "url": "http://127.0.0.1:1001", "labels": {"gpu": "x"}},
        {"name": "b", "url": "http://127.0.0.1:1002", "labels": {"gpu": "x"}},
    ],
    "models": [{"name": "m:1", "place": {"labels": {"gpu": "x"}, "replicas": 1}}],
}


def test_replicas_one_is_one_placement():
    fleet = load_bytes(yaml.safe_dump(DOC).encode(), "t.yaml")
    rows = [c for c in diff(None, fleet).changes if c.kind == "placement"]
    assert [c.name for c in rows] == ["m:1 @ 1 of gpu=x"]
