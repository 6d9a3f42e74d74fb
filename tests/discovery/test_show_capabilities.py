"""Capabilities from /api/show when /api/tags lists none (older Ollama): the
health poller against a real `herd sim --tags-without-capabilities`, over HTTP."""

from __future__ import annotations

import json
import urllib.request

from herd.discovery.capabilities import ShowCache, capabilities_of
from herd.discovery.static import StaticPoller
from herd.manifest.model import Node
from herd.router.routing.proxy import Upstream
from tests.router.routerproc import start_sim


def test_the_poller_asks_api_show_once_per_digest():
    sim = start_sim(
        "node-a",
        models="llama3.2:3b,qwen3:0.6b",
        extra=("--tags-without-capabilities",),
    )
    try:
        with urllib.request.urlopen(sim.url + "/api/tags", timeout=5) as reply:
            tags = json.loads(reply.read())["models"]
        assert tags and not any("capabilities" in t for t in tags)
        node = Node(name="node-a", url=sim.url)
        poller = StaticPoller(lambda: None, Upstream())
        caps = {}
        for _ in range(3):  # one /api/show per poll: two models, two polls
            details = poller.poll_node(node).details
            caps = {k: v.get("capabilities") for k, v in details.items()}
        assert "thinking" in caps["qwen3:0.6b"]
        assert "completion" in caps["llama3.2:3b"]
        assert "thinking" not in caps["llama3.2:3b"]
        # The third poll asked nothing: the digests were known.
        assert sim.stats()["paths"].get("/api/show") == 2 == poller.shows.asked
    finally:
        sim.kill()


def test_odd_answers_and_the_bound():
    assert capabilities_of(b'{"capabilities": ["tools", 7, "thinking"]}') == (
        "tools",
        "thinking",
    )
    assert capabilities_of(b"not json") is None
    assert capabilities_of(b'{"capabilities": "thinking"}') is None

    class Down:
        def open(self, *args, **kwargs):
            raise OSError("connection refused")

    cache = ShowCache(Down(), per_poll=5, limit=2)
    entries = tuple({"name": f"m{i}", "digest": f"d{i}"} for i in range(4))
    assert cache.fill("http://n", entries, 0.1) == entries  # nothing to add
    # Failures are remembered (not asked every poll), within the limit.
    assert cache.asked == 4 and len(cache._known) == 2
    cache.fill("http://n", entries[2:], 0.1)
    assert cache.asked == 4
