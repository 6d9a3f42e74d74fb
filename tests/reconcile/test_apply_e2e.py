"""`herd apply` end to end: an imported bundle, three `herd sim` nodes with
stores, the real router (`herd serve`) as registry, the real CLI.

plan shows the pulls → apply performs them through each node's /api/pull from
the router's /v2 → the router serves the model from the nodes that hold it →
a second plan has nothing to do → a manifest edit moves a replica (pull here,
delete there, only with --prune and confirmation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from herd.bundle.importer import import_bundle
from herd.bundle.policy import Policy
from herd.store import Store
from tests.bundle.bundle_helpers import ALLOWED, EXAMPLE
from tests.router.routerproc import ROOT, manifest, start_router, start_sim

pytestmark = pytest.mark.nodes

MODEL = "tiny:latest"


@pytest.fixture
def nodes(tmp_path):
    started = [
        start_sim(f"n{i}", models="", extra=("--store", str(tmp_path / f"node{i}")))
        for i in range(3)
    ]
    yield started
    for sim in started:
        sim.kill()


def fleet_text(nodes, place: dict, **model) -> str:
    doc = yaml.safe_load(manifest(nodes))
    for entry in doc["nodes"]:
        entry["labels"] = {"pool": "gpu"}
    doc["models"] = [{"name": MODEL, "place": place, "bundle": "example", **model}]
    return yaml.safe_dump(doc, sort_keys=False)


def herd(state_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "HERD_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "herd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def holders(nodes) -> dict[str, list[str]]:
    return {
        sim.name: sorted(
            m["name"]
            for m in httpx.get(sim.url + "/api/tags", timeout=5).json()["models"]
        )
        for sim in nodes
    }


def wait_routable(router, want: set[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(router.url + "/fleet/status", timeout=5).json()
        model = next(m for m in status["models"] if m["name"] == MODEL)
        if set(model["on_disk"]) == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"router never saw {MODEL} on {want}: {model}")


def wait_status(router, done, timeout: float = 15) -> dict:
    """The model's /fleet/status entry once `done(entry)` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(router.url + "/fleet/status", timeout=5).json()
        model = next(m for m in status["models"] if m["name"] == MODEL)
        if done(model):
            return model
        time.sleep(0.2)
    raise AssertionError(f"status never settled: {model}")


@pytest.fixture
def site(tmp_path, nodes):
    state_dir = tmp_path / "state"
    store = Store(state_dir)
    try:
        policy = Policy(
            trusted_signers=ALLOWED, require_scan=True, store=state_dir / "store"
        )
        import_bundle(EXAMPLE, policy, store)
    finally:
        store.close()
    text = fleet_text(
        nodes, {"labels": {"pool": "gpu"}, "replicas": 2}, keep_loaded=True
    )
    router = start_router(state_dir, text, tmp_path / "router.log")
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    yield state_dir, router, path
    router.stop()


def test_plan_apply_serve_replan_move_prune(site, nodes):
    state_dir, router, path = site
    registry = router.url.removeprefix("http://")

    # Placed but not pulled yet: the router sends no request to any node.
    router.wait_nodes_up(3)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    early = httpx.post(
        router.url + "/api/chat", json={**chat, "stream": False}, timeout=10
    )
    assert early.status_code == 503, early.text
    assert all(sim.stats()["paths"].get("/api/chat", 0) == 0 for sim in nodes)

    plan = herd(state_dir, "plan", "--json", str(path))
    assert plan.returncode == 2, plan.stderr
    fleet = json.loads(plan.stdout)["fleet"]
    chosen = fleet["placement"][MODEL]
    assert len(chosen) == 2
    pulls = {n["node"]: [p["model"] for p in n["pull"]] for n in fleet["nodes"]}
    assert pulls == {s.name: [MODEL] if s.name in chosen else [] for s in nodes}
    warms = {n["node"]: n["warm"] for n in fleet["nodes"]}
    assert warms == {s.name: [MODEL] if s.name in chosen else [] for s in nodes}
    assert (
        fleet["nodes"][0]["pull"] == []
        or fleet["nodes"][0]["pull"][0]["bundle"] == "example"
    )

    applied = herd(state_dir, "apply", "--yes", "--registry", registry, str(path))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "pull tiny:latest done" in applied.stdout
    assert holders(nodes) == {
        s.name: [MODEL] if s.name in chosen else [] for s in nodes
    }

    wait_routable(router, set(chosen))
    status = wait_status(router, lambda m: m["missing_on"] == [])
    assert status["placed_on"] == chosen and status["extra_on"] == []
    for _ in range(6):
        reply = httpx.post(
            router.url + "/api/chat",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": False,
            },
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-herd-node"] in chosen

    again = herd(state_dir, "plan", str(path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do on the nodes" in again.stdout

    # Move one replica: keep chosen[0], swap chosen[1] for the third node.
    other = next(s.name for s in nodes if s.name not in chosen)
    moved = tmp_text = fleet_text(nodes, {"nodes": [chosen[0], other]})
    path.write_text(tmp_text)
    plan = herd(state_dir, "plan", "--prune", "--json", str(path))
    assert plan.returncode == 2
    by_node = {n["node"]: n for n in json.loads(plan.stdout)["fleet"]["nodes"]}
    assert [p["model"] for p in by_node[other]["pull"]] == [MODEL]
    assert by_node[chosen[1]]["prune"] == [MODEL]
    assert by_node[chosen[0]]["prune"] == [] and by_node[chosen[0]]["pull"] == []

    refused = herd(state_dir, "apply", "--prune", "--registry", registry, str(path))
    assert refused.returncode == 1
    assert "refusing to apply without confirmation" in refused.stderr
    assert "DELETING" not in refused.stderr and "- delete" in " ".join(
        refused.stdout.split()
    )
    assert holders(nodes)[chosen[1]] == [MODEL], "nothing deleted without consent"

    # Without --prune the old replica stays (listed as left alone).
    applied = herd(state_dir, "apply", "--yes", "--registry", registry, str(path))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert holders(nodes) == {s.name: [MODEL] for s in nodes}
    # The router learns of the pull by polling: wait until it has seen every node.
    status = wait_status(
        router, lambda m: m["extra_on"] == [chosen[1]] and m["missing_on"] == []
    )
    assert status["placed_on"] == [chosen[0], other] and status["missing_on"] == []
    applied = herd(
        state_dir, "apply", "--yes", "--prune", "--registry", registry, str(path)
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert holders(nodes) == {
        s.name: [MODEL] if s.name in (chosen[0], other) else [] for s in nodes
    }
    assert moved

    store = Store(state_dir)
    try:
        rows = store.audit_rows(limit=50)
    finally:
        store.close()
    node_rows = [r for r in rows if r["action"].startswith("node.")]
    pulls = [json.loads(r["detail"]) for r in node_rows if r["action"] == "node.pull"]
    assert {p["node"] for p in pulls} == {*chosen, other}
    assert all(p["outcome"] == "ok" and p["model"] == MODEL for p in pulls)
    assert all(r["revision"] for r in node_rows)
    for action, where in (
        ("node.copy", {*chosen, other}),
        ("node.untag", {*chosen, other}),
        ("node.warm", set(chosen)),
    ):
        details = [json.loads(r["detail"]) for r in node_rows if r["action"] == action]
        assert {d["node"] for d in details} == where, action
        assert all(d["outcome"] == "ok" for d in details)
    deletes = [
        json.loads(r["detail"]) for r in node_rows if r["action"] == "node.delete"
    ]
    assert [(d["node"], d["model"]) for d in deletes] == [(chosen[1], MODEL)]


def test_bundle_not_imported_refuses_before_touching_anything(site, nodes):
    state_dir, router, path = site
    path.write_text(path.read_text().replace("bundle: example", "bundle: site-2027"))
    plan = herd(state_dir, "plan", str(path))
    assert plan.returncode == 1
    assert "bundle 'site-2027' is not imported" in plan.stdout
    applied = herd(state_dir, "apply", "--yes", "--registry", "127.0.0.1:1", str(path))
    assert applied.returncode == 1
    assert "bundle 'site-2027' is not imported" in applied.stderr
    assert holders(nodes) == {s.name: [] for s in nodes}
    # --json is JSON Lines whatever happens, ending in a summary.
    applied = herd(
        state_dir, "apply", "--yes", "--json", "--registry", "127.0.0.1:1", str(path)
    )
    assert applied.returncode == 1
    events = [json.loads(line) for line in applied.stdout.splitlines()]
    assert [e["event"] for e in events] == ["plan", "summary"]
    assert events[-1]["ok"] is False
    assert "site-2027" in events[-1]["errors"][0]


def test_registry_name_is_not_routed_and_unreachable_node_fails(site, nodes):
    """A node holding only `ROUTER/library/NAME:TAG` (pulled, not yet copied) is
    not sent requests for NAME:TAG; a node the manifest places the model on
    that does not answer makes plan and apply exit 1 while the others are done."""
    state_dir, router, path = site
    registry = router.url.removeprefix("http://")
    path.write_text(fleet_text(nodes, {"labels": {"pool": "gpu"}}))
    long = f"{registry}/library/{MODEL}"
    pulled = httpx.post(
        nodes[1].url + "/api/pull",
        json={"model": long, "insecure": True, "stream": False},
        timeout=60,
    )
    assert pulled.status_code == 200, pulled.text
    assert holders(nodes)[nodes[1].name] == [long]
    router.wait_nodes_up(3)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # until a poll has seen the pull
        status = httpx.get(router.url + "/fleet/status", timeout=5).json()
        seen = next(n for n in status["nodes"] if n["name"] == nodes[1].name)
        if seen["models_on_disk"]:
            break
        time.sleep(0.2)
    assert seen["models_on_disk"] == [long.lower()]
    model = next(m for m in status["models"] if m["name"] == MODEL)
    assert model["on_disk"] == []
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    early = httpx.post(
        router.url + "/api/chat", json={**chat, "stream": False}, timeout=10
    )
    assert early.status_code == 503, early.text
    assert nodes[1].stats()["paths"].get("/api/chat", 0) == 0

    nodes[0].kill()
    plan = herd(state_dir, "plan", str(path))
    assert plan.returncode == 1, plan.stdout + plan.stderr
    assert f"node {nodes[0].name} is unreachable" in plan.stderr
    assert "Cannot be satisfied:" in plan.stdout
    applied = herd(
        state_dir, "apply", "--yes", "--json", "--registry", registry, str(path)
    )
    assert applied.returncode == 1, applied.stdout + applied.stderr
    events = [json.loads(line) for line in applied.stdout.splitlines()]
    assert events[0]["event"] == "plan" and events[-1]["event"] == "summary"
    assert all("event" in e for e in events)
    summary = events[-1]
    assert summary["ok"] is False and summary["failed"] == {}
    assert summary["unreachable"] == [nodes[0].name]
    assert nodes[0].name in summary["unsatisfied"][0]
    assert set(summary["done"]) == {nodes[1].name, nodes[2].name}
    assert holders(nodes[1:]) == {s.name: [MODEL] for s in nodes[1:]}
    wait_routable(router, {nodes[1].name, nodes[2].name})
    reply = httpx.post(router.url + "/api/chat", json={**chat, "stream": False})
    assert reply.status_code == 200, reply.text
