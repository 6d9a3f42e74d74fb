"""Session-6 attack pass on the dashboard and the operator routes.

What held (tried through a real router, gunicorn + gevent, over loopback):
- Who may read: /dashboard, its files, /dashboard/api/*, /fleet/nodes and
  /metrics answer 403 to a group that is not an operator, 401 to an operator
  group's network without its token, 403 to an address in no group; a
  non-operator's /fleet/status names no node. /healthz and /readyz answer
  anyone and name no node.
- Odd paths on the files: `..` (plain or %2e%2e), `//`, a backslash, %00, an
  unknown name: 404 without touching the file system (only the listed files
  are served); `vendor%2fX` is the listed vendor file; a query string is
  ignored. No route reads a query parameter, so none can select a window.
- Other methods: 405 (OPTIONS: falcon's empty 200 with `Allow`, after the
  group check); an unknown method: 400.
- A traces.db that is garbage, empty, a directory, or missing: the traffic
  answers `available: false` with the reason, the health findings say the
  traces are unknown (200, never 500).
- A reload that takes `operator` from a group refuses its next poll.
- A foreign Host (DNS rebinding from a browser): 421 before any group check.
- /metrics label values stay bounded whatever callers send: an undeclared
  model is `model="other"`, an unknown path `route="(unrouted)"`.
- /v2 (node addresses only): `..`, %2e%2e, %2f and %00 in names and digests
  find no route.
- The dashboard's CSP holds in Chromium (an injected inline script, inline
  handler and foreign script are refused); the page uses no innerHTML.

What did not, fixed as a family (each test below fails without its fix):
- Any value of the wrong type in scrub.json (herd.health.scrub.read_state)
  or in traces.db (text or a blob where a number belongs, a blob where text
  belongs): /dashboard/api/health or /traffic answered 500.
- Infinity in a REAL column of traces.db or an audit detail was written as
  `Infinity` (JSON.parse refuses it: the page stopped updating); a blob in
  herd.db's audit, or a detail nested past the encoder's limit, answered 500,
  as did one in its bundle catalog (every overview, through the drift).
  Every dashboard answer is now strict JSON (herd.dashboard.api.encode).
- Concurrent health polls after the traces cache expired each ran the
  traces.db aggregates at once (one pool thread each): now one runs, the
  others wait for it (herd.dashboard.cached.Cached, as the traffic has).
- HEAD on the page, its files and the JSON: 405 (HTTP requires HEAD wherever
  GET is served; curl -I and link checkers use it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from falcon import inspect

from herd.dashboard.api import encode
from herd.dashboard.page import ASSETS
from herd.dashboard.traffic import traffic
from herd.health import checks
from herd.health.gather import offline_snapshot
from herd.health.tracestats import trace_facts
from herd.manifest.model import build_fleet
from herd.router.observe.traces import Trace, TraceLog
from herd.router.routing.forward import dumps
from tests.dashboard.cdp import BINARY, Chromium
from tests.health.test_monitor import app_with_one_node
from tests.health.test_scrub import DAMAGED as DAMAGED_SCRUB
from tests.router.routerproc import (
    TOKEN,
    TOKEN_SHA,
    apply,
    manifest,
    start_router,
)

NOW = 2_000_000.0

#: Columns of a trace row and what a damaged file may hold in each instead.
NUMERIC = ("ts", "status", "queue_ms", "ttft_ms", "duration_ms", "tokens_in",
           "tokens_out", "retries")  # fmt: skip
TEXT = ("client", "requested_model", "served_model", "node", "error_class",
        "tags")  # fmt: skip
WRONG = {
    **{(c, kind): v for c in NUMERIC for kind, v in (("text", "x"), ("blob", b"\1"))},
    **{(c, kind): v for c in TEXT for kind, v in (("blob", b"\xff"), ("int", 7))},
}


def good(ts: float) -> Trace:
    return Trace(
        ts, "ops", "/api/chat", "POST", "m", "m", "node-a", 200, 0.0, 50.0,
        90.0, 3, 5, 0, None, "127.0.0.1", "app:wiki",
    )  # fmt: skip


def seed(state_dir: Path, now: float, column: str, value: object) -> None:
    """A traces.db the router wrote (good rows, recent and a day old) and one
    row holding `value` in `column`, as a disk error or a hand edit leaves."""
    log = TraceLog(state_dir, clock=lambda: now)
    for age in (5, 30, 60, 3600, 40_000):
        for _ in range(12):
            log.record(good(now - age))
    log.flush()
    log.close()
    conn = sqlite3.connect(state_dir / "traces.db")
    with conn:
        conn.execute(
            "INSERT INTO traces (ts, client, route, method, requested_model,"
            " served_model, node, status, ttft_ms, duration_ms, tokens_in, tags)"
            " VALUES (?, 'ops', '/api/chat', 'POST', 'm', 'm', 'node-a', 200,"
            " 40.0, 80.0, 1, 'app:x')",
            (now - 10,),
        )
        conn.execute(
            f"UPDATE traces SET {column} = ? WHERE id = last_insert_rowid()", (value,)
        )
    conn.close()


#: The traffic rollup's tables (herd.router.observe.rollup), a good row of
#: each, and what a damaged file may hold in any column instead.
ROLLUP = {
    "traffic_minutes": {"minute": 0, "client": "evil", "model": "evil", "tags": "",
                        "requests": 3, "errors": 1, "tokens_in": 5, "tokens_out": 7},
    "traffic_latency_minutes": {"minute": 0, "metric": 0, "bin": 80, "n": 3},
    "traffic_latency": {"slot": 0, "client": "evil", "model": "evil", "tags": "",
                        "metric": 0, "bin": 80, "n": 3},
}  # fmt: skip
DAMAGED_FIGURES = {"text": "x", "blob": b"\xff", "inf": 1e999, "real": 0.5,
                   "negative": -1, "least": -(2**63), "most": 2**63 - 1}  # fmt: skip


def damage_rollup(conn: sqlite3.Connection, now: float, table: str, column: str,
                  value: object) -> None:  # fmt: skip
    """A row of `table` in the minute (quarter) of `now - 30` with `value` in
    `column`."""
    when, grain = ("slot", 900) if "slot" in ROLLUP[table] else ("minute", 60)
    row = {**ROLLUP[table], when: int(now - 30) // grain * grain, column: value}
    conn.execute(
        f"INSERT OR REPLACE INTO {table} ({', '.join(row)})"
        f" VALUES ({', '.join('?' * len(row))})",
        list(row.values()),
    )


@pytest.mark.parametrize(
    "table,column,kind",
    [(t, c, k) for t, row in ROLLUP.items() for c in row for k in DAMAGED_FIGURES],
)
def test_a_damaged_rollup_row_is_no_500(tmp_path, table, column, kind):
    """The traffic is read from the rollup the writer keeps: a value of any
    type or size in any of its columns counts as nothing (or as a key named
    by its SQL quoting), and the good rows' figures still come through as
    strict JSON (a sum past SQLite's integers, or a figure that is not a
    number, would otherwise fail the whole answer)."""
    seed(tmp_path, NOW, "node", "node-a")
    conn = sqlite3.connect(tmp_path / "traces.db")
    with conn:
        damage_rollup(conn, NOW, table, column, DAMAGED_FIGURES[kind])
        damage_rollup(conn, NOW - 60, table, column, DAMAGED_FIGURES[kind])
    conn.close()
    body = traffic(tmp_path, NOW)
    assert body["available"], body
    for name in ("hour", "day"):
        total = body["windows"][name]["total"]
        assert total["count"] >= 36 and total["ttft_p50_ms"] is not None
    strict(encode(body))


@pytest.mark.parametrize("kind", sorted(DAMAGED_FIGURES))
def test_a_damaged_rollup_mark_is_no_500(tmp_path, kind):
    """The rollup's mark (the last trace id rolled up) of any type or size:
    the traffic still answers, as strict JSON, and counts nothing twice (a
    negative mark rolled up forever, 10,000 ids of nothing at a time)."""
    seed(tmp_path, NOW, "node", "node-a")
    first = traffic(tmp_path, NOW)["windows"]["hour"]["total"]["count"]
    assert first >= 36
    conn = sqlite3.connect(tmp_path / "traces.db")
    with conn:
        conn.execute("UPDATE traffic_rolled SET id = ?", (DAMAGED_FIGURES[kind],))
    conn.close()
    body = traffic(tmp_path, NOW)
    assert body["available"], body
    strict(encode(body))
    count = body["windows"]["hour"]["total"]["count"]
    assert count == first  # the seeded traces, rolled up once


@pytest.mark.parametrize("column,kind", sorted(WRONG))
def test_a_value_of_the_wrong_type_in_traces_db_is_no_500(tmp_path, column, kind):
    """The traffic and the health facts still come from the good rows, and
    both encode as JSON (a blob used to reach the encoder as bytes, a text
    TTFT a sort of mixed types)."""
    seed(tmp_path, NOW, column, WRONG[column, kind])
    body = traffic(tmp_path, NOW)
    assert body["available"], body
    assert body["windows"]["hour"]["total"]["count"] >= 36
    dumps(body)
    facts = trace_facts(tmp_path, NOW, 30)
    assert facts is not None and facts.recent_total >= 36
    fleet = build_fleet({"metadata": {"name": "f"}, "nodes": [], "models": []})
    snap = offline_snapshot(str(tmp_path), fleet, None, now=NOW)
    dumps(checks.run(snap))


# -- through a real router -----------------------------------------------------

#: A node nothing listens on: these tests never reach a node.
NO_NODE = type("S", (), {"name": "node-a", "url": "http://127.0.0.1:9"})()
CLIENTS = [
    {"name": "ops", "networks": ["127.0.0.1/32"], "operator": True},
    {"name": "apps", "networks": ["127.0.0.2/32"]},
    {"name": "keyed", "networks": ["127.0.0.3/32"], "operator": True,
     "token_sha256": TOKEN_SHA},
]  # fmt: skip
SOURCE = {"ops": "127.0.0.1", "apps": "127.0.0.2", "keyed": "127.0.0.3",
          "nobody": "127.0.0.9"}  # fmt: skip
PAGES = ["/dashboard", *(f"/dashboard/static/{a}" for a in ASSETS)]
API = [f"/dashboard/api/{n}" for n in ("overview", "traffic", "audit", "health")]
OPERATOR_ONLY = [*PAGES, *API, "/fleet/nodes", "/metrics"]


#: Audit rows (time, user, action, revision, detail) as a damaged or edited
#: herd.db may hold them.
DAMAGED_AUDIT = [
    (b"\xff", b"\x00", "edit", b"\x01", "[" * 500 + "]" * 500),
    ("t", "u", "a", 1e999, '{"a": 1e999, "b": NaN}'),
    ("t", "u", "a", None, "[" * 100_000),
]


def strict(data: bytes):
    """JSON as a browser's JSON.parse reads it (no NaN, no Infinity)."""

    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=refuse)


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    """One router (one worker) whose traces.db already holds a damaged row."""
    tmp = tmp_path_factory.mktemp("attack6")
    state = tmp / "state"
    state.mkdir()
    seed(state, time.time(), "served_model", b"\xff\xfe")
    conn = sqlite3.connect(state / "traces.db")
    with conn:
        conn.execute("UPDATE traces SET ttft_ms = 'soon' WHERE id % 7 = 0")
        conn.execute("UPDATE traces SET ttft_ms = 1e999 WHERE id % 7 = 1")
        conn.execute("UPDATE traces SET duration_ms = -1e999 WHERE id % 7 = 2")
        now = time.time()
        for table, row in ROLLUP.items():
            for column in row:
                for value in DAMAGED_FIGURES.values():
                    damage_rollup(conn, now, table, column, value)
    conn.close()
    text = manifest([NO_NODE], clients=CLIENTS)
    apply(state, text)
    conn = sqlite3.connect(state / "herd.db")
    with conn:
        for row in DAMAGED_AUDIT:
            conn.execute(
                "INSERT INTO audit (time, user, action, revision, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                row,
            )
    conn.close()
    router = start_router(
        state,
        text,
        tmp / "router.log",
        # No scrub tick rewrites scrub.json while a test has damaged it.
        extra_env={"HERD_SCRUB_INTERVAL": "3600"},
    )
    try:
        yield router
    finally:
        router.stop()


def call(router, method: str, path: str, group: str = "ops", **headers: str):
    transport = httpx.HTTPTransport(local_address=SOURCE[group])
    with httpx.Client(base_url=router.url, transport=transport, timeout=30) as c:
        return c.request(method, path, headers=headers)


def test_damaged_state_files_answer_200_with_what_is_known(router):
    """traces.db holds a blob for a model name and text for TTFTs, and
    scrub.json each kind of damage: the health findings and the traffic still
    answer (they answered 500)."""
    store = str(router.state_dir / "store")
    traffic_reply = call(router, "GET", "/dashboard/api/traffic")
    assert traffic_reply.status_code == 200, traffic_reply.text
    body = traffic_reply.json()
    assert body["available"] and body["windows"]["hour"]["total"]["count"] >= 36
    for damaged in DAMAGED_SCRUB:
        state = {"store": store, **damaged}
        (router.state_dir / "scrub.json").write_text(json.dumps(state))
        reply = call(router, "GET", "/dashboard/api/health")
        assert reply.status_code == 200, (damaged, reply.text)
        found = {f["id"]: f for f in reply.json()["findings"]}
        assert found["bundle_store"]["severity"] == "unknown", damaged
    (router.state_dir / "scrub.json").unlink()


def test_every_dashboard_answer_is_json_a_browser_parses(router):
    """Infinity in traces.db (a REAL column holds it) and in an audit detail,
    blobs and a deep detail in herd.db: each answer is strict JSON (a blob
    answered 500; Infinity was written as `Infinity`, which JSON.parse
    refuses, so the page stopped updating)."""
    for path in API:
        reply = call(router, "GET", path)
        assert reply.status_code == 200, (path, reply.text[:300])
        body = strict(reply.content)
    audit = strict(call(router, "GET", "/dashboard/api/audit").content)
    assert audit["available"] and len(audit["events"]) >= 4
    shown = {json.dumps(e["detail"])[:40] for e in audit["events"]}
    assert '{"a": null, "b": null}' in shown
    assert body["status"]  # the health findings came through too


def test_encode_writes_strict_json():
    """The family: any non-finite float anywhere, and lone surrogates."""
    inf = float("inf")
    body = {"a": inf, "b": [1.5, float("nan"), {"c": -inf}], "d": ("\ud800", inf)}
    assert strict(encode(body)) == {
        "a": None,
        "b": [1.5, None, {"c": None}],
        "d": ["\ud800", None],
    }


def test_head_answers_wherever_get_does(router):
    """HEAD on the page, its files and the JSON answered 405."""
    for path in [*OPERATOR_ONLY, "/fleet/status", "/readyz", "/healthz"]:
        got = call(router, "GET", path)
        head = call(router, "HEAD", path)
        assert head.status_code == got.status_code, path
        assert not head.content, path
        for name in ("content-type", "content-security-policy", "cache-control"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
        if path in PAGES:
            assert head.headers["content-length"] == got.headers["content-length"]
    for path in OPERATOR_ONLY:
        assert call(router, "HEAD", path, "apps").status_code == 403, path


def test_every_route_that_answers_get_answers_head(tmp_path):
    """The family: no route of the app serves GET without HEAD."""
    app, traces = app_with_one_node(tmp_path)
    try:
        missing = [
            route.path
            for route in inspect.inspect_routes(app)
            if {m.method for m in route.methods if not m.internal} >= {"GET"}
            and "HEAD" not in {m.method for m in route.methods if not m.internal}
        ]
    finally:
        traces.close()
    assert not missing


@pytest.mark.parametrize("path", OPERATOR_ONLY)
def test_only_operator_groups_read_fleet_internals(router, path):
    """Held: the matrix of callers (see the module docstring)."""
    assert call(router, "GET", path).status_code == 200
    assert call(router, "GET", path, "keyed").status_code == 401
    keyed = call(router, "GET", path, "keyed", Authorization=f"Bearer {TOKEN}")
    assert keyed.status_code == 200
    wrong = call(router, "GET", path, "keyed", Authorization="Bearer nope")
    assert wrong.status_code == 401
    for group in ("apps", "nobody"):
        reply = call(router, "GET", path, group)
        assert reply.status_code == 403, (group, reply.text)
        assert "node-a" not in reply.text and "127.0.0.1:9" not in reply.text


#: Odd spellings of the dashboard's files: never a file that is not listed,
#: never a 500 (None: either 404 or a listed file, as the client may have
#: removed the dot segments).
ODD = {
    "/dashboard/static/..%2Fapi.py": 404,
    "/dashboard/static/%2e%2e/api.py": 404,
    "/dashboard/static/vendor/../dashboard.js": None,
    "/dashboard/static//dashboard.js": 404,
    "/dashboard/static/dashboard.js%00": 404,
    "/dashboard/static/dashboard.js%00.png": 404,
    "/dashboard/static\\dashboard.js": 404,
    "/dashboard/static/index.html": 404,
    "/dashboard/static/DASHBOARD.JS": 404,
    "/dashboard/static/" + "a" * 3000: 404,
    "/dashboard/static/vendor%2FuPlot.min.css": 200,
    "/dashboard/static/dashboard.js?name=../../api.py": 200,
    "/dashboard/api/traffic?window=-1&window=%D9%A3&node=../x": 200,
}


def test_odd_paths_serve_only_the_listed_files(router):
    listed = {
        (Path(__file__).parents[2] / "herd/dashboard/static" / a).read_bytes()
        for a in ASSETS
    }
    for path, status in ODD.items():
        raw = httpx.URL(router.url + "/").copy_with(raw_path=path.encode())
        reply = call(router, "GET", raw)
        assert reply.status_code == (status or reply.status_code), path
        assert reply.status_code in (200, 404), (path, reply.text[:200])
        if reply.status_code == 200 and "/static/" in path:
            assert reply.content in listed


@pytest.mark.parametrize(
    "column,value", [("name", b"\xff"), ("name", 7), ("size", "big"), ("size", 1e999)]
)
def test_a_damaged_bundle_catalog_reads_as_none(tmp_path, column, value):
    """The overview's drift reads herd.db's bundle catalog: a value of the
    wrong type there answered 500 on every overview poll."""
    from herd.dashboard.ledger import bundle_catalog

    conn = sqlite3.connect(tmp_path / "herd.db")
    with conn:
        conn.execute("CREATE TABLE bundles (name TEXT)")
        conn.execute("CREATE TABLE bundle_models (name TEXT, bundle TEXT, size INT)")
        conn.execute("INSERT INTO bundles VALUES ('b1')")
        conn.execute("INSERT INTO bundle_models VALUES ('m:7b', 'b1', 10)")
        conn.execute(f"UPDATE bundle_models SET {column} = ?", (value,))
    conn.close()
    models, bundles = bundle_catalog(tmp_path)
    assert models == {} or all(isinstance(m.size, int) for m in models.values())


#: Run in the loaded page: what its CSP lets through (and what it reports).
PROBE = """(() => {
  window.__csp = {inline: 0, handler: 0, violations: []};
  document.addEventListener('securitypolicyviolation',
    e => window.__csp.violations.push(e.effectiveDirective));
  const inline = document.createElement('script');
  inline.textContent = 'window.__csp.inline = 1';
  document.head.appendChild(inline);
  const foreign = document.createElement('script');
  foreign.src = 'http://127.0.0.2:9/x.js';
  document.head.appendChild(foreign);
  const button = document.createElement('button');
  button.setAttribute('onclick', 'window.__csp.handler = 1');
  document.body.appendChild(button);
  button.click();
  return 1;
})()"""


@pytest.mark.skipif(BINARY is None, reason="Debian package chromium not installed")
def test_chromium_enforces_the_dashboards_csp(router, tmp_path):
    """The CSP is sent, and the browser obeys it: an injected inline script,
    an inline event handler and a script from elsewhere are all refused (and
    reported), on the page as served by the router. (eval cannot be probed
    this way: code DevTools evaluates is exempt from the page's CSP.)"""
    browser = Chromium.start(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        page = browser.page()
        page.call("Page.enable")
        page.call("Page.navigate", url=router.url + "/dashboard")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded
            if page.evaluate("document.readyState") == "complete":
                break
            time.sleep(0.2)
        assert page.evaluate(PROBE) == 1
        seen: dict = {}
        while time.monotonic() < deadline:  # bounded
            seen = json.loads(page.evaluate("JSON.stringify(window.__csp)"))
            if len(seen["violations"]) >= 3:
                break
            time.sleep(0.2)
        page.close()
    finally:
        browser.stop()
    assert seen["inline"] == 0 and seen["handler"] == 0, seen
    assert sorted(seen["violations"]) == [
        "script-src-attr",
        "script-src-elem",
        "script-src-elem",
    ], seen


def test_a_group_no_longer_operator_is_refused_from_the_next_request(router):
    """(Last in this file: it changes the shared router's manifest.) A reload
    that takes `operator` from a group refuses its very next poll, cached
    answers included, and its /fleet/status narrows to its own view."""
    for path in API:
        assert call(router, "GET", path).status_code == 200  # caches are warm
    demoted = [{**c, "operator": False} if c["name"] == "ops" else c for c in CLIENTS]
    revision = apply(router.state_dir, manifest([NO_NODE], clients=demoted))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # bounded
        if call(router, "GET", "/readyz").json()["revision"] == revision:
            break
        time.sleep(0.1)
    for path in OPERATOR_ONLY:
        reply = call(router, "GET", path)
        assert reply.status_code == 403, (path, reply.text[:200])
    status = call(router, "GET", "/fleet/status").json()
    assert status["operator"] is False and "nodes" not in status
