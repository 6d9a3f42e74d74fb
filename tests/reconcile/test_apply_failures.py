"""A node dying mid-pull and a node with a full disk: apply reports both and exits
1, the other node finishes; the next apply completes the first, resuming its
partial blob (real sims, real router, a 150 MB model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from herd.bundle.importer import import_bundle
from herd.bundle.policy import Policy
from herd.store import Store
from tests.bundle.bundle_helpers import ALLOWED, big_gguf, make_bundle
from tests.router.routerproc import ROOT, manifest, start_router, start_sim

pytestmark = pytest.mark.nodes

MODEL = "big:1"


def test_node_killed_mid_pull(tmp_path):
    state_dir = tmp_path / "state"
    weights = big_gguf(tmp_path / "big.gguf", 150_000_000)
    bundle = make_bundle(tmp_path / "bundle", name="bigb", model=MODEL, weights=weights)
    store = Store(state_dir)
    try:
        policy = Policy(ALLOWED, True, state_dir / "store")
        import_bundle(bundle, policy, store)
    finally:
        store.close()
    weights_size = weights.stat().st_size
    weights.unlink()
    nodes = [
        start_sim("n0", models="", extra=("--store", str(tmp_path / "node0"))),
        # A slow link, so the pull is surely cut in the middle.
        start_sim(
            "n1",
            models="",
            extra=("--store", str(tmp_path / "node1"), "--pull-mb-per-s", "40"),
        ),
        # A full disk: its pull fails the way Ollama's does, every time.
        start_sim(
            "n2",
            models="",
            extra=("--store", str(tmp_path / "node2"), "--disk-free-mb", "10"),
        ),
    ]
    router = None
    try:
        doc = yaml.safe_load(manifest(nodes))
        doc["models"] = [
            {"name": MODEL, "place": {"nodes": ["n0", "n1", "n2"]}, "bundle": "bigb"}
        ]
        text = yaml.safe_dump(doc)
        router = start_router(state_dir, text, tmp_path / "router.log")
        path = tmp_path / "fleet.yaml"
        path.write_text(text)
        args = [
            sys.executable, "-m", "herd", "apply", "--yes", "--json",
            "--registry", router.url.removeprefix("http://"), str(path),
        ]  # fmt: skip
        env = {**os.environ, "HERD_STATE_DIR": str(state_dir)}
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        total = weights_size
        events = []
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            if (
                event.get("event") == "progress"
                and event["node"] == "n1"
                and (event.get("completed") or 0) >= total // 2
                and nodes[1].proc.poll() is None
            ):
                nodes[1].kill()
        assert proc.wait(120) == 1, proc.stderr.read()
        summary = events[-1]
        assert summary["event"] == "summary" and summary["ok"] is False
        assert summary["done"] == {"n0": [f"pull {MODEL}"]}
        assert sorted(summary["failed"]) == ["n1", "n2"]
        assert summary["failed"]["n1"][0].startswith(f"pull {MODEL}: ")
        assert "no space left on device" in summary["failed"]["n2"][0]
        tags = httpx.get(nodes[0].url + "/api/tags", timeout=5).json()["models"]
        assert [m["name"] for m in tags] == [MODEL]

        port = urlsplit(nodes[1].url).port
        nodes[1] = start_sim(
            "n1", models="", port=port, extra=("--store", str(tmp_path / "node1"))
        )
        again = subprocess.run(
            args[:5] + args[6:], capture_output=True, text=True, env=env, cwd=ROOT,
            timeout=120,
        )  # fmt: skip
        assert again.returncode == 1, again.stdout + again.stderr
        assert "n0: nothing to do" in again.stdout
        assert "n1: done: pull big:1" in again.stdout
        assert "n2: FAILED pull big:1: write " in again.stdout
        assert "no space left on device" in again.stdout
        tags = httpx.get(nodes[1].url + "/api/tags", timeout=5).json()["models"]
        assert [m["name"] for m in tags] == [MODEL]
        # Resumed, as Ollama resumes: only the bytes the first try did not get.
        fetched = nodes[1].stats()["pulled_bytes"]
        assert 0 < fetched <= total * 3 // 4, (fetched, total)

        store = Store(state_dir)
        try:
            rows = [r for r in store.audit_rows(50) if r["action"] == "node.pull"]
        finally:
            store.close()
        outcomes = sorted(
            (json.loads(r["detail"])["node"], json.loads(r["detail"])["outcome"])
            for r in rows
        )
        assert outcomes == [
            ("n0", "ok"),
            ("n1", "failed"),
            ("n1", "ok"),
            ("n2", "failed"),
            ("n2", "failed"),
        ]
    finally:
        for sim in nodes:
            sim.kill()
        if router:
            router.stop()
