"""`herd plan` lists the nodes that joined by heartbeat, marked as discovered,
with what the manifest's label placements give them; agents' disk free steers
the replica choice. The store is the one router workers write
(STATE_DIR/discovery.db); a real `herd sim` is each node's Ollama."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from herd.discovery import roster
from herd.discovery.heartbeat import parse
from herd.discovery.membership import Membership
from herd.manifest.loader import load_bytes
from herd.reconcile import session
from tests.discovery.agentkit import discovery_manifest, make_key
from tests.router.routerproc import ROOT


def join(state_dir, name: str, url: str, *, free: int | None = None, **kw) -> None:
    """Record an admitted heartbeat as a router worker would."""
    metrics = {"disk": {"path": "/var/lib/ollama", "free": free}} if free else {}
    members = Membership(state_dir / "discovery.db", **kw)
    hb = parse({"name": name, "url": url, "interval_s": 1, "metrics": metrics})
    assert members.beat(hb, "127.0.0.1", None, "mdns") is not None
    members.close()


def herd_plan(state_dir, manifest, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HERD_STATE_DIR": str(state_dir), "HERD_APPLY_NODES": "1"}
    return subprocess.run(
        [sys.executable, "-m", "herd", "plan", str(manifest), *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip


@pytest.mark.e2e
def test_plan_shows_discovered_nodes_and_what_they_get(tmp_path, sims):
    static, agent = sims("static-a"), sims("gpu-d")
    make_key(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(discovery_manifest([static], tmp_path / "fleet.key"))
    state = tmp_path / "state"
    state.mkdir()
    join(state, "gpu-d", agent.url)
    join(state, "gone-e", "http://127.0.0.1:9", clock=lambda: time.time() - 3600)

    text = herd_plan(state, manifest)
    assert text.returncode in (0, 2), text.stderr
    line = next(x for x in text.stdout.splitlines() if x.strip().startswith("gpu-d"))
    assert agent.url in line and "discovered: agent via mdns" in line
    after = text.stdout.split(line, 1)[1].splitlines()[1]
    assert "qwen3:0.6b" in after  # placed by label pool=agents (mdns defaults)
    assert "gone-e" not in text.stdout  # silent past the timeout: not planned

    fleet = json.loads(herd_plan(state, manifest, "--json").stdout)["fleet"]
    assert set(fleet["discovered"]) == {"gpu-d"}
    assert fleet["placement"]["qwen3:0.6b"] == ["gpu-d"]
    assert "static-a" not in fleet["discovered"]


def test_agents_disk_free_picks_the_replica(tmp_path):
    doc = yaml.safe_load(discovery_manifest([], tmp_path / "fleet.key"))
    doc["models"] = [
        {"name": "big:1", "place": {"labels": {"pool": "agents"}, "replicas": 1}}
    ]
    fleet = load_bytes(yaml.safe_dump(doc).encode(), "fleet.yaml")
    for name, free in (("gpu-a", 10 << 30), ("gpu-b", 900 << 30)):
        join(tmp_path, name, f"http://127.0.0.{2 + len(name)}:1", free=free)
    members = roster.live_members(tmp_path, 60)
    assert roster.disk_free(members) == {"gpu-a": 10 << 30, "gpu-b": 900 << 30}
    planned = roster.with_discovered(fleet, members)
    empty = lambda url, timeout: {"models": []}  # noqa: E731 - nodes hold nothing

    plan = session.plan_live(
        None, planned, get_json=empty, free_bytes=roster.disk_free(members)
    )
    assert plan.placed["big:1"] == ("gpu-b",)
    swapped = {"gpu-a": 900 << 30, "gpu-b": 10 << 30}
    plan = session.plan_live(None, planned, get_json=empty, free_bytes=swapped)
    assert plan.placed["big:1"] == ("gpu-a",)
