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

What did not, fixed as a family (each test below fails without its fix):
- Any value of the wrong type in scrub.json (herd.health.scrub.read_state)
  or in traces.db (text or a blob where a number belongs, a blob where text
  belongs): /dashboard/api/health or /traffic answered 500.
- Concurrent health polls after the traces cache expired each ran the
  traces.db aggregates at once (one pool thread each): now one runs, the
  others wait for it (herd.dashboard.cached.Cached, as the traffic has).
- HEAD on the page, its files and the JSON: 405 (HTTP requires HEAD wherever
  GET is served; curl -I and link checkers use it).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from herd.dashboard.traffic import traffic
from herd.health import checks
from herd.health.gather import offline_snapshot
from herd.health.tracestats import trace_facts
from herd.manifest.model import build_fleet
from herd.router.observe.traces import Trace, TraceLog
from herd.router.routing.forward import dumps

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
