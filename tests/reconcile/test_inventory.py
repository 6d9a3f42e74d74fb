"""Reading a node's models: short names count, registry-named copies do not."""

from __future__ import annotations

from herd.manifest.model import Node
from herd.reconcile.inventory import read_node

NODE = Node("a", "http://127.0.0.1:9")


def test_registry_named_copies_are_not_present():
    replies = {
        "/api/tags": {
            "models": [
                {"name": "tiny:latest", "model": "tiny:latest", "digest": "d1"},
                {"model": "10.0.0.5:11435/library/big:1", "digest": "d2"},
                {"model": "Qwen3", "digest": "d3"},
            ]
        },
        "/api/ps": {"models": [{"model": "tiny:latest"}]},
    }
    inv = read_node(NODE, lambda url, timeout: replies[url[len(NODE.url) :]])
    assert inv.reachable and dict(inv.models) == {
        "tiny:latest": "d1",
        "qwen3:latest": "d3",
    }
    assert inv.loaded == {"tiny:latest"}
    assert inv.holds("TINY") and not inv.holds("big:1")


def test_unreachable_node_says_why():
    def refuse(url, timeout):
        raise ConnectionRefusedError(111, "Connection refused")

    inv = read_node(NODE, refuse)
    assert not inv.reachable and "Connection refused" in inv.error


def test_garbage_is_unreachable_not_a_crash():
    inv = read_node(
        NODE, lambda url, timeout: (_ for _ in ()).throw(ValueError("bad json"))
    )
    assert not inv.reachable and inv.error == "bad json"
