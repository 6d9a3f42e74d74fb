"""`herd serve` and `herd status` through the real CLI."""

from __future__ import annotations

import json

from routerproc import apply, manifest


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
    r = router(manifest([node]), state_dir=state_dir)
    r.wait_nodes_up(1)
    out = herd("status", "--router", r.url, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["source"].startswith("live router")
    assert report["nodes"][0]["state"] == "up"
    assert "llama3.2:3b" in report["nodes"][0]["models_on_disk"]
    text = herd("status", "--router", r.url).stdout
    assert "node-a" in text and "up" in text
