"""The health engine end to end: a real `herd serve` over `herd sim` nodes.

One router, two sim nodes and a bundle store with real blobs; the scrub runs
every 0.2 s. The test sees a clean bill of health (`herd health` exits 0), a
blob corrupted on disk found by the scrub (critical, exit 1), a stopped sim
reported "node down", the route refused to a group that is not an operator,
and `herd health` computing from the state directory once the router is gone.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.router.routerproc import ROOT, manifest, start_router, start_sim

PATH = "/dashboard/api/health"
CLIENTS = [
    {"name": "ops", "networks": ["127.0.0.1/32"], "operator": True},
    {"name": "apps", "networks": ["127.0.0.2/32"]},
]


def put_blob(store: Path, data: bytes) -> Path:
    path = store / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def herd_health(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "herd", "health", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def get_from(url: str, source: str) -> tuple[int, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(
        host, int(port), timeout=10, source_address=(source, 0)
    )
    try:
        conn.request("GET", PATH)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read() or b"null")
    finally:
        conn.close()


def wait_for(router, predicate, what: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, body = router.get(PATH)
        if status == 200 and predicate(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"never saw {what}: {body}")


def ids(body: dict, severity: str) -> set[str]:
    return {f["id"] for f in body["findings"] if f["severity"] == severity}


@pytest.fixture
def fleet(tmp_path: Path):
    a, b = start_sim("node-a"), start_sim("node-b")
    state = tmp_path / "state"
    store = state / "store"
    blobs = [put_blob(store, f"layer {i}".encode() * 1000) for i in range(4)]
    router = None
    try:
        router = start_router(
            state,
            manifest([a, b], clients=CLIENTS),
            tmp_path / "router.log",
            extra_env={"HERD_SCRUB_INTERVAL": "0.2", "HERD_SCRUB_BYTES": "4096"},
        )
        yield router, a, b, state, blobs
    finally:
        if router is not None:
            router.stop()
        a.kill()
        b.kill()


def test_health_engine_end_to_end(fleet):
    router, a, b, state, blobs = fleet
    router.wait_nodes_up(2)

    # A clean fleet: nothing critical; agent checks unknown (no herd node
    # agent runs here), never a pass; the scrub has verified every blob.
    body = wait_for(
        router,
        lambda body: (
            "bundle_store" in body["passed"]
            and json.loads((state / "scrub.json").read_text())["full_passes"] >= 1
        ),
        "a full scrub pass",
    )
    assert body["counts"]["critical"] == 0, body
    assert {"memory", "disk", "clock_skew", "agent_silent"} <= ids(body, "unknown")
    assert not {"memory", "disk", "clock_skew"} & set(body["passed"])
    assert "node_down" in body["passed"] and "revision" in body["passed"]
    done = herd_health(state, "--router", router.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "UNKNOWN   memory" in done.stdout

    # Operators only.
    status, refused = get_from(router.url, "127.0.0.2")
    assert status == 403, refused
    assert "node-a" not in json.dumps(refused)

    # A blob whose bytes rot on disk: the scrub finds it, herd health exits 1.
    bad = blobs[2]
    bad.write_bytes(b"bit rot" * 1000)
    digest = "sha256:" + bad.name.removeprefix("sha256-")
    body = wait_for(
        router,
        lambda body: any(
            f["id"] == "bundle_store" and digest[:19] in f["finding"]
            for f in body["findings"]
        ),
        "the corrupted blob",
    )
    assert "bundle_store" in ids(body, "critical")
    assert body["status"] == "critical"
    done = herd_health(state, "--router", router.url, "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["counts"]["critical"] >= 1

    # A node that stops: "node down", critical, naming it.
    b.kill()
    body = wait_for(
        router,
        lambda body: any(
            f["id"] == "node_down" and "node-b" in f["finding"]
            for f in body["findings"]
        ),
        "node-b down",
    )
    down = [f for f in body["findings"] if f["id"] == "node_down"]
    assert [f["severity"] for f in down] == ["critical"]
    assert "node-a" not in down[0]["finding"]

    # herd status shows the findings too.
    shown = subprocess.run(
        [sys.executable, "-m", "herd", "status", "--state-dir", str(state)]
        + ["--router", router.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert "CRITICAL  node_down" in shown.stdout, shown.stdout + shown.stderr

    # No router: computed from the state dir; node facts unknown, the scrub's
    # finding still critical, so still exit 1.
    router.stop()
    done = herd_health(state, "--router", router.url, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    offline = json.loads(done.stdout)
    assert offline["source"].startswith("state directory")
    assert "node_down" in ids(offline, "unknown")
    assert "bundle_store" in ids(offline, "critical")


def test_agent_facts_known_where_an_agent_reports(tmp_path, sims, router, monkeypatch):
    """A node with a real `herd node` agent: memory, disk and clock skew are
    judged (no "unknown" naming it); the static node without one stays unknown."""
    import yaml

    from tests.discovery.agentkit import discovery_manifest, make_key
    from tests.node.test_agent import start_agent, stop

    static, local = sims("static-a"), sims("ollama-of-agent")
    make_key(tmp_path)
    doc = yaml.safe_load(discovery_manifest([static], tmp_path / "fleet.key"))
    doc["router"]["clients"][0]["operator"] = True
    r = router(yaml.safe_dump(doc))
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    agent = start_agent(r.url, local.url, tmp_path / "fleet.key", "gpu-h")
    try:
        body = wait_for(
            r,
            lambda body: "gpu-h" in json.dumps(r.get("/fleet/nodes")[1]),
            "the agent joining",
        )
        body = wait_for(r, lambda body: True, "findings")
        for check in ("memory", "disk", "clock_skew", "agent_silent"):
            unknown = [
                f["finding"]
                for f in body["findings"]
                if f["id"] == check and f["severity"] == "unknown"
            ]
            assert unknown and all("static-a" in u for u in unknown), (check, body)
            assert not any("gpu-h" in u for u in unknown), (check, body)
        skewed = [f for f in body["findings"] if f["id"] == "clock_skew"]
        assert all(f["severity"] == "unknown" for f in skewed), skewed
    finally:
        stop(agent)
