"""Scoring uses what agents report, through a real router: memory fit,
X-Herd-Decision naming it, and the X-Herd-Prefer header."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from tests.discovery.agentkit import (
    beat,
    body,
    discovery_manifest,
    make_key,
    sim_models,
)
from tests.discovery.test_heartbeat_router import node_names, wait_for

pytestmark = pytest.mark.e2e
GB = 1024**3


def chat(router, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    data = json.dumps(
        {"model": "qwen3:0.6b", "stream": False,
         "messages": [{"role": "user", "content": "hi"}]}
    ).encode()  # fmt: skip
    req = urllib.request.Request(
        router.url + "/api/chat", data=data, method="POST", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as ex:
        return ex.code, ex.headers, ex.read()


def test_memory_fit_and_preferred_labels(tmp_path, sims, router):
    static, small, big = sims("static-a"), sims("small"), sims("big")
    key = make_key(tmp_path)
    r = router(
        discovery_manifest(
            [static],
            tmp_path / "fleet.key",
            overrides={"small-box": {"labels": {"gpu": "tiny"}}},
        )
    )
    cold = {"models": sim_models(small)["models"], "loaded": []}
    tight = {"memory": {"total": 8 * GB, "available": 1024 * 1024}}
    roomy = {"memory": {"total": 128 * GB, "available": 64 * GB}}
    assert (
        beat(r.url, key, body("small-box", small.url, metrics=tight, **cold))[0] == 200
    )
    assert beat(r.url, key, body("big-box", big.url, metrics=roomy, **cold))[0] == 200

    assert wait_for(lambda: {"small-box", "big-box"} <= node_names(r), timeout=5)
    for _ in range(3):
        status, headers, _ = chat(r)
        assert status == 200 and headers["X-Herd-Node"] == "big-box"
        # Memory decided, so the decision is explained without being asked.
        assert "small-box excluded (memory: model needs" in headers["X-Herd-Decision"]

    # With room on both, the preferred label wins; a bad header is a 400.
    assert (
        beat(r.url, key, body("small-box", small.url, metrics=roomy, **cold))[0] == 200
    )
    status, headers, _ = chat(r, {"X-Herd-Prefer": "gpu=tiny"})
    assert status == 200 and headers["X-Herd-Node"] == "small-box"
    status, _, raw = chat(r, {"X-Herd-Prefer": "gpu"})
    assert status == 400 and b"X-Herd-Prefer" in raw

    nodes = {n["name"]: n for n in r.get("/fleet/nodes")[1]["nodes"]}
    assert nodes["big-box"]["metrics"]["memory"]["available"] == 64 * GB
    assert nodes["small-box"]["admission"].startswith("signed heartbeat from")


def test_no_memory_facts_while_no_agent_reports():
    """A static fleet (no member): memory() answers at once, nothing looked up."""
    from herd.discovery.agents import AgentAwareHealth
    from herd.discovery.membership import Membership

    health = AgentAwareHealth(
        lambda: None,
        None,
        lambda: 0.0,
        membership=Membership(),
        static_fleet=lambda: None,
    )
    assert health.memory(object(), object(), "m") == {}
