"""`herd serve` and `herd status` through the real CLI."""

from __future__ import annotations

import json

import httpx

from tests.router.routerproc import apply, manifest


def test_serve_without_an_applied_manifest_is_one_clean_line(herd):
    out = herd("serve")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "herd apply" in out.stderr
    assert "Traceback" not in out.stderr


def test_status_from_manifest_when_no_router(herd, state_dir):
    node = type("N", (), {"name": "n1", "url": "http://127.0.0.1:9"})
    apply(state_dir, manifest([node], listen="127.0.0.1:9"))
    out = herd("status")
    assert out.returncode == 0, out.stderr
    assert "router not reachable" in out.stdout and "n1" in out.stdout
    report = json.loads(herd("status", "--json").stdout)
    assert report["nodes"][0]["state"] == "unknown"
    assert report["models"][0]["placed_on"] == ["n1"]


def test_status_from_the_running_router(herd, sims, router, state_dir):
    node = sims("node-a")
    only = [{"name": "llama3.2:3b", "place": {"nodes": ["node-a"]}}]
    r = router(manifest([node], models=only), state_dir=state_dir)
    r.wait_nodes_up(1)
    out = herd("status", "--router", r.url, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["source"].startswith("live router")
    assert report["nodes"][0]["state"] == "up"
    assert "llama3.2:3b" in report["nodes"][0]["models_on_disk"]
    assert "llava:7b" in report["nodes"][0]["unmanaged_models"]  # drift
    text = herd("status", "--router", r.url).stdout
    assert "node-a" in text and "up" in text
    assert "does not declare: " in text


def test_serve_on_ipv6_loopback(sims, router):
    node = sims("node-a")
    r = router(manifest([node]), host="::1")
    assert r.url.startswith("http://[::1]:")
    r.wait_nodes_up(1)
    reply = httpx.post(
        r.url + "/api/chat",
        json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert reply.status_code == 200 and reply.headers["X-Herd-Node"] == "node-a"
