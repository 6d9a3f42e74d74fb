"""The app in-process (falcon TestClient): error shapes frozen per API family,
traces, hot reload rules, and the no-side-effects import."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
from falcon import testing

from herd.errors import HerdError
from herd.manifest.model import build_fleet
from herd.router.app import create_app
from herd.router.observe.traces import BATCH_MAX, Trace, TraceLog, row
from herd.router.reload import PointerSource, StaticSource
from herd.router.routing.proxy import Upstream
from tests.router.routerproc import ROOT, apply, free_port, manifest

LOCAL = {"remote_addr": "127.0.0.1"}


@pytest.fixture
def client(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fleet = build_fleet(
        {
            "metadata": {"name": "shapes"},
            "router": {
                "clients": [{"name": "local", "networks": ["127.0.0.0/8"]}],
                "limits": {"max_body_mb": 0.001, "retries": 0},
            },
            "nodes": [{"name": "gone", "url": dead}],
            "models": [{"name": "m", "place": {"nodes": ["gone"]}}],
        }
    )
    traces = TraceLog(tmp_path)
    app = create_app(StaticSource(fleet), traces, Upstream(), background=False)
    yield testing.TestClient(app, headers={"Host": "localhost"}), traces
    traces.close()


CHAT = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}


def test_error_shapes_are_frozen(client):
    c, _ = client
    r = c.simulate_post("/api/chat", json=CHAT, **LOCAL)
    assert (r.status_code, r.json) == (404, {"error": "model 'nope' not found"})
    r = c.simulate_post("/v1/chat/completions", json=CHAT, **LOCAL)
    assert r.status_code == 404
    assert r.json == {
        "error": {
            "message": "model 'nope' not found",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    r = c.simulate_get("/api/tags", remote_addr="10.1.1.1")
    assert r.status_code == 403 and set(r.json) == {"error"}
    assert isinstance(r.json["error"], str)
    r = c.simulate_get("/v1/models", remote_addr="10.1.1.1")
    assert r.status_code == 403
    assert set(r.json["error"]) == {"message", "type", "param", "code"}
    assert r.json["error"]["type"] == "permission_error"
    r = c.simulate_post("/api/chat", body=b"{not json", **LOCAL)
    assert r.status_code == 400 and "not valid JSON" in r.json["error"]
    r = c.simulate_post("/api/chat", body=b"x" * 2000, **LOCAL)
    assert r.status_code == 413
    r = c.simulate_get("/api/nothing", **LOCAL)
    assert r.status_code == 404 and isinstance(r.json["error"], str)
    r = c.simulate_get("/v1/nothing", **LOCAL)
    assert r.status_code == 404 and r.json["error"]["type"] == "invalid_request_error"
    r = c.simulate_delete("/api/delete", json={"model": "m"}, **LOCAL)
    assert r.status_code == 403 and "herd apply" in r.json["error"]


def test_error_bodies_are_never_sniffed(client):
    """An error body quotes what the client sent (here a path that looks like
    HTML): every family says nosniff, so no browser renders it as a page."""
    c, _ = client
    for path in ("/api/<script>x</script>", "/v1/<b>x", "/v2/<i>"):
        r = c.simulate_get(path, **LOCAL)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/json", path
        assert r.headers["x-content-type-options"] == "nosniff", path
    r = c.simulate_post("/api/chat", json=CHAT, **LOCAL)
    assert r.headers["x-content-type-options"] == "nosniff"


def test_dead_node_then_no_healthy_node(client):
    c, traces = client
    body = {**CHAT, "model": "m", "stream": False}
    r = c.simulate_post("/api/chat", json=body, **LOCAL)
    assert r.status_code == 502 and "refused" in r.json["error"]
    r = c.simulate_post("/v1/chat/completions", json=body, **LOCAL)
    assert r.status_code == 503  # the refusal marked the node down at once
    assert r.json["error"]["type"] == "server_error"
    assert traces.flush() == 2
    rows = list(traces._db().db.query("SELECT * FROM traces ORDER BY id"))
    assert [row["status"] for row in rows] == [502, 503]
    assert rows[0]["client"] == "local" and rows[0]["requested_model"] == "m"
    assert rows[1]["error_class"] == "NoHealthyNode"


def test_traces_retention(tmp_path):
    now = time.time()
    log = TraceLog(tmp_path, retention_days=lambda: 1, clock=lambda: now)
    for age_days in (0, 0.5, 2, 30):
        log.record(
            Trace(
                now - age_days * 86400,
                "c",
                "/api/chat",
                "POST",
                "m",
                "m",
                "n",
                200,
                0.1,
                5.0,
                9.0,
                3,
                4,
                0,
                None,
            )
        )
    assert log.flush() == 4
    assert log.prune() == 2
    assert log._db().db["traces"].count == 2
    log.close()


def test_reload_keeps_good_revision(tmp_path, sims):
    node = type("N", (), {"name": "n1", "url": "http://127.0.0.1:9"})
    state = tmp_path / "state"
    apply(state, manifest([node]))
    source = PointerSource(state, clock=time.monotonic)
    assert source.current().revision == 1
    from herd.store import Store

    store = Store(state)
    store.record(
        b"kind: nonsense\n",
        expected_head=1,
        summary="bad",
        source="t",
        base_dir=str(state),
    )
    store.close()
    assert source.check() is False and source.last_error
    assert source.current().revision == 1
    seen = []
    source.listeners.append(seen.append)
    apply(state, manifest([node], listen="127.0.0.1:11499"))
    assert source.check() is True and source.served.revision == 3
    assert seen[0].fleet.router.listen == "127.0.0.1:11499"


def test_import_has_no_side_effects():
    """Importing the app starts nothing and leaves gevent's patching intact."""
    code = (
        "import sys, threading, warnings\n"
        "import herd.router.app\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert 'gevent' not in sys.modules and 'geventhttpclient' not in sys.modules\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import gevent.monkey; gevent.monkey.patch_all()\n"
        "assert not caught, [str(w.message) for w in caught]\n"
        "import socket, gevent.socket\n"
        "assert socket.socket is gevent.socket.socket\n"
        "assert gevent.monkey.is_module_patched('threading')\n"
        "print('clean')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_fallbacks_manifest_then_request(sims, tmp_path):
    sim = sims("alive")
    dead = f"http://127.0.0.1:{free_port()}"
    fleet = build_fleet(
        {
            "metadata": {"name": "fallbacks"},
            "router": {
                "clients": [
                    # operator: X-Herd-Node names the node that served
                    {"name": "local", "networks": ["127.0.0.0/8"], "operator": True}
                ],
                "limits": {"retries": 3},
            },
            "nodes": [
                {"name": "gone", "url": dead},
                {"name": "alive", "url": sim.url},
            ],
            "models": [
                {
                    "name": "llama3.2:3b",
                    "fallbacks": ["qwen3:0.6b"],
                    "place": {"nodes": ["gone"]},
                },
                {"name": "llava:7b", "place": {"nodes": ["gone"]}},
                {"name": "qwen3:0.6b", "place": {"nodes": ["alive"]}},
            ],
        }
    )
    traces = TraceLog(tmp_path)
    app = create_app(StaticSource(fleet), traces, Upstream(), background=False)
    c = testing.TestClient(app, headers={"Host": "localhost"})
    ask = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
    r = c.simulate_post("/api/chat", json={"model": "llama3.2:3b", **ask}, **LOCAL)
    assert r.status_code == 200, r.text
    assert r.headers["X-Herd-Node"] == "alive"
    assert r.headers["X-Herd-Model"] == "qwen3:0.6b"
    body = {"model": "llava:7b", "fallback_models": ["qwen3:0.6b"], **ask}
    r = c.simulate_post("/v1/chat/completions", json=body, **LOCAL)
    assert r.status_code == 200 and r.headers["X-Herd-Model"] == "qwen3:0.6b"
    assert r.json["model"] == "llava:7b"  # echoes what the client asked for
    body = {"model": "llava:7b", "fallback_models": ["gpt-99"], **ask}
    r = c.simulate_post("/api/chat", json=body, **LOCAL)
    assert r.status_code == 400 and "gpt-99" in r.json["error"]
    r = c.simulate_post("/api/chat", json={"model": "llava:7b", **ask}, **LOCAL)
    assert r.status_code in (502, 503)  # no fallback: the only node is gone
    traces.flush()
    served = [
        row["served_model"]
        for row in traces._db().db.query("SELECT served_model FROM traces")
    ]
    assert served[:2] == ["qwen3:0.6b", "qwen3:0.6b"]
    traces.close()


def test_registry_is_mounted_for_nodes(tmp_path):
    fleet = build_fleet(
        {
            "metadata": {"name": "reg"},
            "router": {"clients": [{"name": "local", "networks": ["127.0.0.1/32"]}]},
            "nodes": [{"name": "gpu", "url": "http://10.20.1.11:11434"}],
            "models": [{"name": "m", "place": {"nodes": ["gpu"]}}],
        }
    )
    (tmp_path / "store").mkdir()
    app = create_app(
        StaticSource(fleet),
        TraceLog(None),
        Upstream(),
        background=False,
        bundle_store=lambda: tmp_path / "store",
    )
    c = testing.TestClient(app, headers={"Host": "localhost"})
    assert c.simulate_get("/v2/", remote_addr="10.20.1.11").status_code == 200
    missing = c.simulate_get("/v2/library/m/manifests/latest", remote_addr="10.20.1.11")
    assert missing.status_code == 404
    # Not a node and not in a client group: refused before the registry.
    assert c.simulate_get("/v2/", remote_addr="10.20.1.99").status_code == 403
    # A node may pull, but not chat.
    assert c.simulate_get("/api/tags", remote_addr="10.20.1.11").status_code == 403


def test_trace_flush_writes_everything_in_slices(tmp_path):
    log = TraceLog(tmp_path)
    for _ in range(1234):
        log.record(
            Trace(
                time.time(),
                "c",
                "/api/chat",
                "POST",
                "m",
                "m",
                "n",
                200,
                0.1,
                5.0,
                9.0,
                3,
                4,
                0,
                None,
            )
        )
    pauses = []
    log.tick(pause=lambda: pauses.append(1))
    # Transactions of BATCH_MAX rows, a pause between two of them.
    assert log.written == 1234
    assert len(pauses) == -(-1234 // BATCH_MAX) - 1
    log.close()


def test_keep_loaded_is_sent_to_the_node(sims, tmp_path):
    sim = sims("alive")
    fleet = build_fleet(
        {
            "metadata": {"name": "pinned"},
            "router": {"clients": [{"name": "local", "networks": ["127.0.0.0/8"]}]},
            "nodes": [{"name": "alive", "url": sim.url}],
            "models": [
                {"name": "llama3.2:3b", "keep_loaded": True},
                {"name": "qwen3:0.6b", "keep_loaded": "0"},
            ],
        }
    )
    app = create_app(StaticSource(fleet), TraceLog(None), Upstream(), background=False)
    c = testing.TestClient(app, headers={"Host": "localhost"})
    for model in ("llama3.2:3b", "qwen3:0.6b"):
        body = {"model": model, "prompt": "hi", "stream": False}
        assert c.simulate_post("/api/generate", json=body, **LOCAL).status_code == 200
    with urllib.request.urlopen(sim.url + "/api/ps", timeout=5) as reply:
        loaded = {
            m["model"]: m["expires_at"] for m in json.loads(reply.read())["models"]
        }
    assert loaded["llama3.2:3b"] > "2090"  # pinned: "forever"
    assert "qwen3:0.6b" not in loaded  # keep_alive 0 unloads at once


def test_an_empty_or_blank_body_is_missing(client):
    c, _ = client
    for body in (b"", b" \t\r\n\x0b\x0c"):
        r = c.simulate_post("/api/chat", body=body, **LOCAL)
        assert (r.status_code, r.json) == (400, {"error": "missing request body"})
    r = c.simulate_post("/api/chat", body=b"\x1c\xa0", **LOCAL)  # not blank
    assert r.status_code == 400 and "missing" not in r.json["error"]


def test_access_log_lines_are_batched(tmp_path):
    import io

    from herd.router.observe.accesslog import AccessLog
    from herd.router.routing.forward import Outcome

    out = io.StringIO()
    log = AccessLog(out, clock=lambda: 0.0)
    done = Outcome(
        t0=0.0,
        started=0.0,
        route="/api/chat",
        method="POST",
        client="lan",
        served_model="m:latest",
        node="n1",
        status=200,
        peer="10.0.0.9",
    )
    log.request(row(done, 0.00125))
    assert out.getvalue() == ""  # nothing written per request
    log.flush()
    assert out.getvalue() == (
        "1970-01-01T00:00:00Z herd.access 10.0.0.9 lan POST /api/chat 200 "
        "model=m:latest node=n1 retries=0 1.2ms\n"
    )


def test_workers_count_one_refusal_per_bad_revision(tmp_path):
    """Two sources on one state directory (two workers) count a bad revision
    once between them; the next bad revision counts again."""
    from herd.store import Store

    node = type("N", (), {"name": "n1", "url": "http://127.0.0.1:9"})
    state = tmp_path / "state"
    apply(state, manifest([node]))
    workers = [PointerSource(state), PointerSource(state)]
    for head in (1, 2):
        store = Store(state)
        store.record(
            f"kind: nonsense {head}\n".encode(),
            expected_head=head,
            summary="bad",
            source="t",
            base_dir=str(state),
        )
        store.close()
        assert [w.check() for w in workers] == [False, False]
        assert all(w.last_error for w in workers)
        assert sum(w.refusals for w in workers) == head


def test_model_chains_are_kept_per_revision_and_client_group():
    """Runtime.models_for keeps resolved chains: never across client groups,
    never across revisions, never a refusal."""
    from herd.errors import ModelNotAllowed, ModelNotFound
    from herd.router.policy import Policy

    def fleet_of(fallbacks: list[str]) -> Any:
        return build_fleet(
            {
                "metadata": {"name": "chains"},
                "router": {
                    "clients": [
                        {"name": "all", "networks": ["127.0.0.1/32"]},
                        {
                            "name": "narrow",
                            "networks": ["127.0.0.2/32"],
                            "models": ["a"],
                        },
                    ]
                },
                "nodes": [{"name": "n", "url": "http://127.0.0.1:9"}],
                "models": [{"name": "a", "fallbacks": fallbacks}, {"name": "b"}],
            }
        )

    source = StaticSource(fleet_of(["b"]))
    rt = create_app(source, TraceLog(None), Upstream(), background=False).herd_runtime
    for _ in range(2):
        fleet = source.current().fleet
        policy = Policy(fleet)
        every, narrow = policy.admit("127.0.0.1", None), policy.admit("127.0.0.2", None)
        a, b = fleet.resolve("a"), fleet.resolve("b")
        assert rt.models_for(fleet, every, "a") == (a, b)
        assert rt.models_for(fleet, narrow, "a") == (a,)
        assert rt.models_for(fleet, every, "A:latest") == (a, b)
        assert rt.models_for(fleet, every, "a") == (a, b)
        for _ in range(2):
            with pytest.raises(ModelNotAllowed):
                rt.models_for(fleet, narrow, "b")
            with pytest.raises(ModelNotFound):
                rt.models_for(fleet, every, "c")
    source.replace(fleet_of([]))
    fleet = source.current().fleet
    every = Policy(fleet).admit("127.0.0.1", None)
    assert rt.models_for(fleet, every, "a") == (fleet.resolve("a"),)


@pytest.mark.parametrize(
    ("length", "status"),
    [("2000", 413), ("99999999999999999999999", 413), ("x1", 400), ("-5", 400)],
)
def test_a_declared_body_length_is_checked_before_reading(client, length, status):
    # The declared length refuses a body over max_body_mb before any of it is
    # read; one that is no decimal number is refused as falcon refuses it.
    import falcon

    c, _ = client
    app = c.app
    fleet = app.herd_runtime.served().fleet
    env = testing.create_environ(
        "/api/chat", method="POST", body=b"{}", headers={"Host": "localhost"}
    )
    env["CONTENT_LENGTH"] = length
    req = falcon.Request(env)
    with pytest.raises((falcon.HTTPError, HerdError)) as refused:
        app.herd_runtime.read_json(req, fleet)
    error = refused.value
    assert getattr(error, "status_code", getattr(error, "status", None)) == status
