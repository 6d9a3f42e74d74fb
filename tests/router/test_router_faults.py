"""End to end under faults: hanging, failing, garbage-sending and dying nodes, a
full queue, hot reload during a stream, node down/up detection, and privacy.

Real `herd serve` (gunicorn + gevent) in front of real `herd sim` nodes whose
fault mode is switched through their loopback control endpoint.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import ollama
import pytest

from tests.router.routerproc import apply, manifest, start_sim

pytestmark = pytest.mark.e2e

HELLO = {"model": "fast", "messages": [{"role": "user", "content": "hello"}]}


def chat(router, stream: bool = False, **extra) -> httpx.Response:
    return httpx.post(
        router.url + "/api/chat", json={**HELLO, "stream": stream, **extra}, timeout=30
    )


def traces(state_dir: Path, until=bool, wait: float = 4.0) -> list[dict]:
    """Trace rows, once the router's batched writer flushed what `until` wants."""
    deadline = time.monotonic() + wait
    rows: list[dict] = []
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(state_dir / "traces.db") as db:
                db.row_factory = sqlite3.Row
                rows = [dict(r) for r in db.execute("SELECT * FROM traces ORDER BY id")]
        except sqlite3.OperationalError:
            rows = []
        if until(rows):
            return rows
        time.sleep(0.2)
    return rows


@pytest.mark.parametrize("mode", ["hang", "error", "garbage"])
def test_failing_node_is_retried_on_another(sims, router, mode):
    a, b = sims("node-a"), sims("node-b")
    r = router(manifest([a, b]))
    r.wait_nodes_up(2)
    a.fault(mode)
    # Non-streaming chats too: the router streams from nodes and folds the
    # answer, so a silent node is caught by the first-byte timeout.
    for stream in (False, True):
        reply = chat(r, stream=stream)
        assert reply.status_code == 200, reply.text
        assert reply.headers["X-Herd-Node"] == "node-b"
        lines = reply.text.strip().split("\n")
        assert json.loads(lines[-1])["done"] is True
    embed = httpx.post(
        r.url + "/api/embed",
        json={"model": "nomic-embed-text", "input": "x"},
        timeout=30,
    )
    assert embed.status_code == 200 and embed.headers["X-Herd-Node"] == "node-b"
    rows = traces(
        r.state_dir, lambda rows: any(x["route"] == "/api/chat" for x in rows)
    )
    chats = [row for row in rows if row["route"] == "/api/chat"]
    assert chats and all(row["node"] == "node-b" for row in chats)
    assert chats[0]["retries"] == 1 and chats[0]["status"] == 200
    assert all(row["ttft_ms"] is not None and row["tokens_out"] for row in chats)


def test_node_killed_mid_stream(sims, router):
    a, b = sims("node-a", tps=20), sims("node-b", tps=20)
    r = router(manifest([a, b]))
    r.wait_nodes_up(2)
    with httpx.stream(
        "POST", r.url + "/api/chat", json={**HELLO, "stream": True}, timeout=30
    ) as reply:
        serving = {"node-a": a, "node-b": b}[reply.headers["X-Herd-Node"]]
        lines = reply.iter_lines()
        first = json.loads(next(lines))
        assert first["done"] is False
        serving.kill()
        rest = [json.loads(line) for line in lines]
    assert rest, "the stream must end with a final line"
    assert "error" in rest[-1] and "mid-stream" in rest[-1]["error"]
    assert all("error" not in obj for obj in rest[:-1])
    # The router keeps serving, from the surviving node.
    again = chat(r)
    assert again.status_code == 200 and again.headers["X-Herd-Node"] != serving.name


def test_cut_mid_stream_official_clients(sims, router):
    a = sims("node-a", tps=50)
    r = router(manifest([a]))
    r.wait_nodes_up(1)
    a.fault("cut-mid-stream", after_chunks=3)
    client = ollama.Client(host=r.url)
    got = []
    with pytest.raises(ollama.ResponseError) as info:
        for chunk in client.chat(
            "fast", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            got.append(chunk)
    assert len(got) == 3 and info.value.status_code == -1
    a.fault("cut-mid-stream", after_chunks=3)
    with httpx.stream(
        "POST",
        r.url + "/v1/chat/completions",
        json={**HELLO, "stream": True},
        timeout=30,
    ) as reply:
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][len("data: ") :])["error"]["type"] == "server_error"


def test_queue_full(sims, router):
    # Replies of 3000 tokens at 5 a second: the stream holding the only slot
    # lasts ten minutes, however slow this machine is, until the test lets go.
    # Its idle and request timeouts are long too: with the usual 2 s idle
    # timeout, a node (or router) stalled that long on a loaded machine ended
    # the holding stream, a busy request below took the freed slot and waited
    # out a ten-minute reply (the hang once seen in CI). The node is stalled
    # for longer than that on purpose here, to show the slot stays held.
    a = sims("node-a", tps=5, extra=("--tokens", "3000"))
    limits = {"queue_depth": 0, "first_byte_timeout_s": 60, "request_timeout_s": 600}
    r = router(manifest([a], max_concurrency=1, limits=limits))
    r.wait_nodes_up(1)
    # Should a busy request get a slot after all, it asks for two tokens: it
    # then fails the status checks at once instead of hanging.
    short = {"options": {"num_predict": 2}}
    with httpx.stream(
        "POST", r.url + "/api/chat", json={**HELLO, "stream": True}, timeout=30
    ) as holding:
        lines = holding.iter_lines()
        next(lines)  # the only slot is taken
        a.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(3)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        assert json.loads(next(lines))["done"] is False  # still the same stream
        r.wait_nodes_up(1)  # (the stalled node may have missed its polls)
        busy = chat(r, **short)
        assert busy.status_code == 503 and busy.headers["Retry-After"]
        assert "busy" in busy.json()["error"]
        busy_ai = httpx.post(
            r.url + "/v1/chat/completions", json={**HELLO, "max_tokens": 2}, timeout=30
        )
        assert busy_ai.status_code == 429 and busy_ai.headers["Retry-After"]
        assert busy_ai.json()["error"]["type"] == "rate_limit_error"
    # The router frees the slot when its next write to the gone client fails
    # (a token every 0.2 s); a short reply shows it is free.
    deadline = time.monotonic() + 15
    while chat(r, **short).status_code != 200:
        assert time.monotonic() < deadline, "the slot never came back"
        time.sleep(0.1)


def test_hot_reload_during_stream(sims, router):
    a = sims("node-a", tps=10)
    text = manifest([a])
    r = router(text)
    r.wait_nodes_up(1)
    assert r.get("/fleet/status")[1]["revision"] == 1
    with httpx.stream(
        "POST", r.url + "/api/chat", json={**HELLO, "stream": True}, timeout=30
    ) as reply:
        lines = reply.iter_lines()
        next(lines)
        models = [
            {
                "name": "llama3.2:3b",
                "aliases": ["fast", "quick"],
                "place": {"nodes": ["node-a"]},
            }
        ]
        apply(r.state_dir, manifest([a], models=models))
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            if r.get("/fleet/status")[1]["revision"] == 2:
                break
            time.sleep(0.05)
        assert r.get("/fleet/status")[1]["revision"] == 2
        rest = [json.loads(line) for line in lines]
    assert rest[-1]["done"] is True and not any("error" in x for x in rest)
    assert chat(r, model="quick").status_code == 200
    # A revision that does not load never replaces the one being served.
    apply_broken(r.state_dir)
    time.sleep(1.2)
    status = r.get("/fleet/status")[1]
    assert status["revision"] == 2 and status["reload_error"]
    assert chat(r, model="quick").status_code == 200


def apply_broken(state_dir: Path) -> None:
    from herd.store import Store

    store = Store(state_dir)
    try:
        store.record(
            b"apiVersion: herd/v1\nkind: Fleet\nnodes: 7\n",
            expected_head=store.head().id,
            summary="broken",
            source="test",
            base_dir=str(state_dir),
        )
    finally:
        store.close()


def test_node_down_then_back(sims, router):
    a, b = sims("node-a"), sims("node-b")
    r = router(manifest([a, b]))
    r.wait_nodes_up(2)
    port = int(a.url.rsplit(":", 1)[1])
    a.kill()
    start = time.monotonic()
    while time.monotonic() - start < 5:
        nodes = {n["name"]: n for n in r.get("/fleet/nodes")[1]["nodes"]}
        if nodes["node-a"]["state"] == "down":
            break
        time.sleep(0.1)
    assert nodes["node-a"]["state"] == "down"
    assert chat(r).headers["X-Herd-Node"] == "node-b"
    back = start_sim("node-a", port=port)
    try:
        r.wait_nodes_up(2, timeout=5)
    finally:
        back.kill()


def test_no_prompt_or_response_text_is_stored_or_logged(sims, router, capfd):
    canary = "CANARY-7f3a9c-do-not-store"
    a = sims("node-a")
    r = router(manifest([a]))
    r.wait_nodes_up(1)
    messages = [{"role": "user", "content": f"remember {canary}"}]
    answers = []
    for stream in (False, True):
        reply = chat(r, stream=stream, messages=messages)
        assert reply.status_code == 200
        answers.append(reply.text)
        ai = httpx.post(
            r.url + "/v1/chat/completions",
            json={"model": "fast", "messages": messages, "stream": stream},
            timeout=30,
        )
        assert ai.status_code == 200
    gen = httpx.post(
        r.url + "/api/generate",
        json={"model": "fast", "prompt": canary, "stream": False},
        timeout=30,
    )
    answer_words = json.loads(gen.text)["response"]
    bad = httpx.post(
        r.url + "/v1/chat/completions",
        json={"model": "fast", "messages": messages, "bogus": canary},
    )
    assert bad.status_code == 400
    rows = traces(r.state_dir, lambda rows: len(rows) >= 6)
    assert len(rows) >= 6
    assert {"client", "node", "served_model", "ttft_ms", "tokens_out"} <= set(rows[0])
    r.stop()  # flushes the last traces
    blobs = [p.read_bytes() for p in r.state_dir.rglob("*") if p.is_file()]
    blobs.append(r.log_path.read_bytes())
    out, err = capfd.readouterr()
    blobs += [out.encode(), err.encode()]
    for blob in blobs:
        assert canary.encode() not in blob
        assert answer_words.encode() not in blob
