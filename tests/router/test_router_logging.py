"""Caller-chosen text in the access log and traces.db: escaped, bounded, cheap.

A model name with a line break must not forge an access-log line, a NUL must
not reach the log, a 900 kB name must not reach the log or traces.db, and a
flood of refused requests must not fill the disk.
"""

from __future__ import annotations

import re
import sqlite3
import time

import httpx
import pytest
from falcon import testing

from herd.manifest.model import build_fleet
from herd.router.app import create_app
from herd.router.observe.logfield import FIELD_MAX, logged
from herd.router.observe.traces import Trace, TraceLog, row
from herd.router.reload import StaticSource
from herd.router.routing.proxy import Upstream
from herd.router.runtime import REFUSALS_BURST
from tests.router.routerproc import manifest

FORGED = "2026-01-01T00:00:00Z herd.access 10.0.0.1 admins POST /api/chat 200"
#: One well-formed access line: every field a token without spaces.
LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ herd\.access \S+ \S+ \S+ \S+ \d{3} "
    r"model=\S+ node=\S+ retries=\d+ \d+\.\dms( error=\S+)?$"
)
HI = [{"role": "user", "content": "hi"}]
TEXT_COLUMNS = (
    "client",
    "route",
    "method",
    "requested_model",
    "served_model",
    "node",
    "error_class",
)


def test_logged_escapes_and_bounds():
    assert logged("llama3.2:3b") == "llama3.2:3b"
    assert logged("a\nb") == "a\\nb"
    assert logged("a\x00b\x1b[31m") == "a\\x00b\\x1b[31m"
    assert logged("two words") == "two\\x20words"
    assert logged("two words\n", spaces=True) == "two words\\n"
    assert logged("back\\slash") == "back\\\\slash"
    assert logged("\u202eevil") == "\\u202eevil"
    huge = logged("m" * 900_000)
    assert len(huge) < FIELD_MAX + 30 and huge.endswith("chars)")
    assert len(logged("\n" * 10_000)) < FIELD_MAX + 30
    for value in ("x\ny", "\x00", "a b", "\u2028", "é"):
        escaped = logged(value)
        assert escaped.isascii() and escaped.isprintable() and " " not in escaped


def test_trace_row_escapes_every_text_field():
    """The row each request leaves (traces.row): every caller-derived text
    escaped and bounded, also when the same text comes again (cached)."""
    from herd.router.routing.forward import Outcome

    hostile = "m\n" + FORGED
    done = Outcome(
        t0=5.0,
        started=1.0,
        route="/api/x\x00",
        method="PO ST",
        client="g\x1b[2J",
        requested_model=hostile,
        served_model="m" * 900,
        node="n\\1",
        status=502,
        queue_ms=1.5,
        ttft_ms=2.5,
        tokens_in=3,
        tokens_out=4,
        retries=1,
        error_class="node\rerror",
        peer="::1 x",
        tags="a,b",
    )
    for _ in range(2):
        got = row(done, 1.25)
        assert got == Trace(
            ts=5.0,
            client=logged("g\x1b[2J"),
            route="/api/x\\x00",
            method="PO\\x20ST",
            requested_model=logged(hostile),
            served_model=logged("m" * 900),
            node="n\\\\1",
            status=502,
            queue_ms=1.5,
            ttft_ms=2.5,
            duration_ms=250.0,
            tokens_in=3,
            tokens_out=4,
            retries=1,
            error_class="node\\rerror",
            peer="::1\\x20x",
            tags="a,b",
        )
        assert "\n" not in got.requested_model
        assert len(got.served_model) < FIELD_MAX + 30
    bare = Outcome(t0=0.0, started=0.0, route="/api/chat", method="POST")
    empty = (None, None, None, 0, None, None, 0.0, None, None, 0, None, None, None)
    assert row(bare, 0.0) == (0.0, None, "/api/chat", "POST", *empty)


def test_trace_row_texts_of_another_type_are_never_taken_from_the_cache():
    """A JSON model name may be a number, a bool or a list: equal keys of
    different types (1, 1.0, True) are escaped each as itself, a list (not
    hashable) is escaped too, and a cached tuple is only ever texts."""
    from herd.router.routing.forward import Outcome

    def traced(model: object) -> str | None:
        done = Outcome(t0=1.0, started=1.0, route="/v1/chat", method="POST")
        done.requested_model = model
        return row(done, 1.0).requested_model

    for _ in range(2):  # the second time from the cache, where there is one
        assert [traced(m) for m in (1, True, 1.0, "1")] == ["1", "True", "1.0", "1"]
        assert traced(["a b"]) == "['a\\x20b']"
        assert traced(None) is None


@pytest.mark.e2e
def test_hostile_model_names_over_real_gunicorn(sims, router):
    node = sims("node-a")
    r = router(manifest([node]))
    r.wait_nodes_up(1)
    names = [
        "llama3.2:3b\n" + FORGED,
        "llama3.2:3b\r\n" + FORGED,
        "nul\x00name",
        "esc\x1b[2Jname",
        "m" * 900_000,
    ]
    sent = 0
    with httpx.Client(timeout=30) as client:
        for name in names:
            for path, body in (
                ("/api/chat", {"model": name, "messages": HI}),
                ("/api/generate", {"model": name, "prompt": "x"}),
                ("/v1/chat/completions", {"model": name, "messages": HI}),
            ):
                reply = client.post(r.url + path, json=body)
                sent += 1
                assert reply.status_code == 400, (path, reply.text[:200])
                assert "model" in reply.text
                assert len(reply.content) < 1000
        # Path text reaches the log only as a route template or "(unrouted)".
        assert client.get(r.url + "/api/x%0A" + FORGED).status_code == 404
        assert client.get(r.url + "/v1/models/a%0A" + FORGED).status_code == 404
        sent += 2
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lines = [ln for ln in r.log().splitlines() if "herd.access" in ln]
        if sum(" 400 " in ln or " 404 " in ln for ln in lines) >= sent:
            break
        time.sleep(0.2)
    raw = r.log_path.read_bytes()
    assert b"\x00" not in raw and b"\x1b" not in raw
    lines = [ln for ln in raw.decode().splitlines() if "herd.access" in ln]
    refused = [ln for ln in lines if " 400 " in ln or " 404 " in ln]
    assert len(refused) == sent, refused
    for line in lines:
        assert LINE.match(line), line
        assert len(line) < 1000
    assert not any(ln.startswith(FORGED) for ln in raw.decode().splitlines())
    assert any("model=llama3.2:3b\\n2026-01-01" in ln for ln in refused)
    # The trace rows: bounded, escaped.
    deadline = time.monotonic() + 15
    rows: list = []
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            db = sqlite3.connect(f"file:{r.state_dir / 'traces.db'}?mode=ro", uri=True)
            with db:
                rows = db.execute(
                    f"SELECT {', '.join(TEXT_COLUMNS)} FROM traces WHERE status >= 400"
                ).fetchall()
            db.close()
        except sqlite3.OperationalError:
            continue  # not written yet
        if len(rows) >= sent:
            break
    assert len(rows) == sent
    for stored in rows:
        for value in stored:
            if value is not None:
                assert len(value) < FIELD_MAX + 30, value[:80]
                assert value.isprintable() and "\n" not in value
    assert (r.state_dir / "traces.db").stat().st_size < 2_000_000


#: A marker placed in the body (never in the model name, which is logged).
MARK = "BODY-MARK-7"
#: Bodies refused (or forwarded) for what they hold, each carrying MARK.
MARKED = {
    "/api/chat": [
        '{"model":"fast","messages":[{"role":"user","content":"%s',  # cut short
        '{"model":"fast","messages":"%s"}',
        '{"model":"fast","messages":[],"%s":1}',
        '{"model":"fast","messages":[],"keep_alive":"%s"}',
        '{"model":"fast","messages":[],"format":"%s"}',
        '{"model":"fast","messages":[],"Messages":"%s"}',
        "%s",
    ],
    "/api/generate": [
        '{"model":"fast","prompt":["%s"]}',
        '{"model":"fast","prompt":"x","options":{"temperature":"%s"}}',
        '{"model":"fast","prompt":"%s","stream":false}',  # answered
    ],
    "/v1/chat/completions": [
        '{"model":"fast","messages":[{"role":"user","content":[{"type":"%s"}]}]}',
        '{"model":"fast","messages":[{"role":"user","content":"x"}],"tool_choice":"%s"}',
        '{"model":"fast","messages":[{"role":"user","content":"x"}],'
        '"reasoning_effort":"%s"}',
        '{"model":"fast","messages":[{"role":"tool","tool_call_id":["%s"]}]}',
        '{"model":"fast","messages":[{"role":"user","content":"%s"}],"stream":false}',
    ],
    "/v1/responses": ['{"model":"fast","input":[{"type":"%s"}]}'],
}


@pytest.mark.e2e
def test_refused_bodies_never_reach_the_log(sims, router):
    """Issue #7 item 12 past the head: whatever a body's parser or checks refuse
    (and what is answered), no log line carries its bytes."""
    r = router(manifest([sims("node-a")]))
    r.wait_nodes_up(1)
    statuses = []
    with httpx.Client(timeout=30) as client:
        for path, bodies in MARKED.items():
            for body in bodies:
                reply = client.post(r.url + path, content=(body % MARK).encode())
                statuses.append(reply.status_code)
    assert statuses.count(400) >= 10 and 200 in statuses, statuses
    r.stop()
    log = r.log()
    assert log.count("herd.access") >= len(statuses)
    assert MARK not in log


@pytest.fixture
def refused_app(tmp_path):
    fleet = build_fleet(
        {
            "metadata": {"name": "flood"},
            "router": {
                "clients": [
                    {"name": "ops", "networks": ["127.0.0.1/32"], "operator": True}
                ]
            },
            "nodes": [{"name": "n", "url": "http://127.0.0.1:9"}],
            "models": [{"name": "m", "place": {"nodes": ["n"]}}],
        }
    )
    traces = TraceLog(tmp_path)
    app = create_app(StaticSource(fleet), traces, Upstream(), background=False)
    yield testing.TestClient(app, headers={"Host": "localhost"}), traces
    traces.close()


def test_a_flood_of_refused_requests_is_counted_not_all_written(refused_app):
    c, traces = refused_app
    flood = REFUSALS_BURST * 3
    big = {"model": "nope" * 100, "messages": []}
    for i in range(flood):
        if i % 2:
            got = c.simulate_get("/api/tags", remote_addr="10.6.6.6")
            assert got.status_code == 403
        else:
            got = c.simulate_post("/api/chat", json=big, remote_addr="127.0.0.1")
            assert got.status_code == 404
    written = traces.flush()
    metrics = c.simulate_get("/metrics", remote_addr="127.0.0.1").text
    unrecorded = int(
        float(
            re.search(r"^herd_refusals_unrecorded_total (\S+)$", metrics, re.M).group(1)
        )
    )
    assert unrecorded > 0 and written < flood
    assert written + unrecorded == flood
    # Answered requests are always recorded, whatever the refusals did.
    for _ in range(5):
        assert c.simulate_get("/api/tags", remote_addr="127.0.0.1").status_code == 200
    traces.flush()
    rows = list(traces._db().db.query("SELECT status FROM traces WHERE status = 200"))
    assert len(rows) >= 5 + 1  # the /metrics read and the five /api/tags
