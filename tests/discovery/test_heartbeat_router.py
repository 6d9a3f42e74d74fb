"""POST /fleet/heartbeat over a real router (gunicorn + gevent, loopback).

An admitted agent is routed to and leaves on goodbye or silence; every rogue
heartbeat is a 4xx with exactly one audit line, and never becomes a node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from herd.discovery import fleetkey
from tests.discovery.agentkit import (
    beat,
    body,
    discovery_manifest,
    make_key,
    post,
    sim_models,
)

pytestmark = pytest.mark.e2e


def chat(router, model: str) -> tuple[int, str | None]:
    data = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        }
    ).encode()
    req = urllib.request.Request(router.url + "/api/chat", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            reply.read()
            return reply.status, reply.headers.get("X-Herd-Node")
    except urllib.error.HTTPError as ex:
        return ex.code, None


def node_names(router) -> set[str]:
    status, doc = router.get("/fleet/nodes")
    assert status == 200
    return {n["name"] for n in doc["nodes"]}


def _with_metric(data: bytes, literal: str) -> bytes:
    """`data` (a heartbeat object) with a metric whose JSON text is `literal`."""
    return data[:-1] + b', "metrics": {"cpu_percent": ' + literal.encode() + b"}}"


def wait_for(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_signed_heartbeat_joins_is_routed_to_and_leaves(tmp_path, sims, router):
    static, agent_sim = sims("static-a"), sims("agent-sim")
    key = make_key(tmp_path)
    r = router(discovery_manifest([static], tmp_path / "fleet.key", timeout_s=3))
    # Before any heartbeat nothing carries pool=agents.
    assert chat(r, "qwen3:0.6b")[0] == 503

    status, doc = beat(
        r.url, key, body("gpu-d", agent_sim.url, **sim_models(agent_sim))
    )
    assert status == 200 and doc["admitted"], doc
    assert wait_for(lambda: "gpu-d" in node_names(r))
    nodes = {n["name"]: n for n in r.get("/fleet/nodes")[1]["nodes"]}
    assert nodes["gpu-d"]["labels"] == {"pool": "agents"}
    assert nodes["gpu-d"]["max_concurrency"] == 3
    assert nodes["gpu-d"]["found"] == "agent"
    assert nodes["gpu-d"]["state"] == "up"
    assert nodes["static-a"]["found"] == "static"
    assert chat(r, "qwen3:0.6b") == (200, "gpu-d")
    assert chat(r, "llama3.2:3b") == (200, "static-a")

    # Goodbye: gone at once.
    status, doc = beat(r.url, key, body("gpu-d", agent_sim.url, goodbye=True))
    assert status == 200, doc
    assert "gpu-d" not in node_names(r)
    assert chat(r, "qwen3:0.6b")[0] == 503
    assert "audit node.left name=gpu-d" in r.log()

    # Silence: gone after heartbeat_timeout_s (3 s here).
    assert (
        beat(r.url, key, body("gpu-d", agent_sim.url, **sim_models(agent_sim)))[0]
        == 200
    )
    assert wait_for(lambda: "gpu-d" in node_names(r), timeout=2)
    assert wait_for(lambda: "gpu-d" not in node_names(r), timeout=10)
    assert "no heartbeat for 3 s" in r.log()


def test_rogue_heartbeats_are_refused_audited_and_never_routed(tmp_path, sims, router):
    static, agent_sim = sims("static-a"), sims("agent-sim")
    key = make_key(tmp_path)
    wrong = fleetkey.generate()
    text = discovery_manifest(
        [static], tmp_path / "fleet.key", networks=["127.0.0.0/30"]
    )
    r = router(text)
    models = sim_models(agent_sim)
    good = body("gpu-d", agent_sim.url, **models)

    signed = fleetkey.sign(key, good, time.time())
    assert post(r.url, good, signed)[0] == 200  # the legitimate holder of gpu-d

    rogue = body("rogue", agent_sim.url, **models)
    cases = {
        "unsigned": post(r.url, rogue),
        "wrong key": post(r.url, rogue, fleetkey.sign(wrong, rogue, time.time())),
        "replayed": post(r.url, good, signed),
        "stale": beat(r.url, key, rogue, now=time.time() - 3600),
        "future": beat(r.url, key, rogue, now=time.time() + 3600),
        "oversized": beat(
            r.url, key, b'{"name": "rogue", "pad": "' + b"x" * 300_000 + b'"}'
        ),
        "not json": beat(r.url, key, b"{not json"),
        "not an object": beat(r.url, key, b"[1, 2]"),
        # Python's json reads NaN and 1e999; /fleet/nodes could then not be
        # read back as JSON. Deep nesting ran out of recursion: a 500.
        "NaN metric": beat(r.url, key, _with_metric(rogue, "NaN")),
        "overflowing metric": beat(r.url, key, _with_metric(rogue, "1e999")),
        "nested too deep": beat(r.url, key, b"[" * 100_000 + b"]" * 100_000),
        "bad name": beat(r.url, key, body("Rogue Node!", agent_sim.url)),
        "url with a name": beat(r.url, key, body("rogue", "http://evil.example:11434")),
        "url outside node_networks": beat(
            r.url, key, body("rogue", "http://192.168.7.7:11434")
        ),
        "source outside networks": beat(r.url, key, rogue, source="127.0.0.9"),
        "static node's name": beat(r.url, key, body("static-a", agent_sim.url)),
        "admitted name from elsewhere": beat(r.url, key, good, source="127.0.0.2"),
        "bad signature header": post(
            r.url,
            rogue,
            {**fleetkey.sign(key, rogue, time.time()), "X-Herd-Signature": "x"},
        ),
        "tampered body": post(
            r.url,
            rogue.replace(b"rogue", b"rogu3"),
            fleetkey.sign(key, rogue, time.time()),
        ),
        # DNS rebinding: heartbeats skip falcon's middleware, not its Host check.
        "host not the router's": post(
            r.url,
            body("gpu-e", "http://127.0.0.1:9"),
            {
                **fleetkey.sign(key, body("gpu-e", "http://127.0.0.1:9"), time.time()),
                "Host": "rebound.example",
            },
        ),
    }
    for case, (status, doc) in cases.items():
        assert 400 <= status < 500, (case, status, doc)
        assert "heartbeat refused" in doc["error"], (case, doc)
    assert cases["unsigned"][0] == 401
    assert cases["wrong key"][0] == 401
    assert cases["replayed"][0] == 409
    assert cases["stale"][0] == 401
    assert cases["oversized"][0] == 413
    assert cases["source outside networks"][0] == 403
    assert cases["static node's name"][0] == 409
    assert cases["admitted name from elsewhere"][0] == 409
    assert cases["NaN metric"][0] == cases["nested too deep"][0] == 400
    assert cases["host not the router's"][0] == 421
    assert "rebound.example" in cases["host not the router's"][1]["error"]

    log = r.log()
    assert log.count("audit heartbeat.refused") == len(cases), log
    assert " 500 " not in log and "Traceback" not in log
    # gpu-d beats again (a slow run may have outlived its first beat's timeout);
    # no rogue case ever became a node.
    assert beat(r.url, key, good)[0] == 200
    assert wait_for(lambda: node_names(r) == {"static-a", "gpu-d"}), node_names(r)
    # The status shows the refusals and why.
    refused = r.get("/fleet/status")[1]["discovery"]["refused"]
    assert len(refused) == len(cases)
    assert any("replayed" in row["reason"] for row in refused)
    # Requests go only where the manifest and the real agent say.
    for _ in range(5):
        assert chat(r, "qwen3:0.6b") == (200, "gpu-d")
    # `herd status` shows how each node was found, and the refusals.
    shown = subprocess.run(
        [sys.executable, "-m", "herd", "status", "--router", r.url],
        env={**os.environ, "HERD_STATE_DIR": str(r.state_dir)},
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    assert re.search(r"gpu-d +agent .*signed heartbeat from 127\.0\.0\.1", shown)
    assert re.search(r"static-a +static .*declared in the manifest", shown)
    assert "heartbeat refused (409): static-a from 127.0.0.1: name static-a" in shown


def test_agent_of_a_static_node_merges_metrics(tmp_path, sims, router):
    static = sims("static-a")
    key = make_key(tmp_path)
    r = router(discovery_manifest([static], tmp_path / "fleet.key"))
    data = body("static-host", static.url, metrics={"memory": {"available": 123}})
    status, doc = beat(r.url, key, data)
    assert status == 200 and "static node static-a" in doc["reason"], doc
    nodes = {n["name"]: n for n in r.get("/fleet/nodes")[1]["nodes"]}
    assert set(nodes) == {"static-a"}
    assert nodes["static-a"]["found"] == "static+agent (agent)"
    assert nodes["static-a"]["metrics"] == {"memory": {"available": 123}}


def test_no_fleet_key_means_no_agent_joins(tmp_path, sims, router):
    static = sims("static-a")
    key = make_key(tmp_path)
    r = router(discovery_manifest([static], tmp_path / "missing.key"))
    status, doc = beat(r.url, key, body("gpu-d", static.url))
    assert status == 403 and "unreadable" in doc["error"]
    assert node_names(r) == {"static-a"}


def test_beats_without_unchanged_models_keep_the_node_served(tmp_path, sims, router):
    static, agent_sim = sims("static-a"), sims("agent-sim")
    key = make_key(tmp_path)
    r = router(discovery_manifest([static], tmp_path / "fleet.key", timeout_s=30))
    models = sim_models(agent_sim)
    full = body("gpu-f", agent_sim.url, inventory="ab" * 8, version="0.12.3", **models)
    assert beat(r.url, key, full)[1]["admitted"]
    # Same inventory, models left out: admitted, and the node keeps its models.
    light = body("gpu-f", agent_sim.url, inventory="ab" * 8, metrics={"cpu": 1})
    status, doc = beat(r.url, key, light)
    assert (status, doc["admitted"], doc.get("resend")) == (200, True, None), doc
    assert wait_for(lambda: "gpu-f" in node_names(r))
    assert chat(r, "qwen3:0.6b") == (200, "gpu-f")
    node = next(n for n in r.get("/fleet/nodes")[1]["nodes"] if n["name"] == "gpu-f")
    assert node["metrics"] == {"cpu": 1} and node["version"] == "0.12.3"
    assert "qwen3:0.6b" in node["models_on_disk"]
    # An inventory the router never took: nothing recorded, asked for all of it.
    other = body("gpu-f", agent_sim.url, inventory="cd" * 8, metrics={"cpu": 2})
    status, doc = beat(r.url, key, other)
    assert (status, doc["admitted"], doc["resend"]) == (200, False, True), doc
    node = next(n for n in r.get("/fleet/nodes")[1]["nodes"] if n["name"] == "gpu-f")
    assert node["metrics"] == {"cpu": 1}
