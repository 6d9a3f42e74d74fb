"""`herd traces` and `herd traces stats` as real subprocesses over a traces.db
written by the router's own TraceLog (real SQLite)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time

import pytest

from herd.router.observe.traces import Trace, TraceLog
from tests.ops.test_audit_chain import herd_cli


def trace(ago: float, **kw) -> Trace:
    base = dict(
        ts=time.time() - ago, client="apps", route="/api/chat", method="POST",
        requested_model="fast", served_model="llama3.2:3b", node="gpu-1",
        status=200, queue_ms=0.5, ttft_ms=100.0, duration_ms=1000.0,
        tokens_in=10, tokens_out=20, retries=0, error_class=None, tags=None,
    )  # fmt: skip
    base.update(kw)
    return Trace(**base)


@pytest.fixture
def state(tmp_path):
    log = TraceLog(tmp_path)
    # gpu-1: ten llama requests tagged app:wiki, TTFT 10..100 ms, one a 502.
    for i in range(10):
        log.record(
            trace(60 + i, ttft_ms=10.0 * (i + 1), duration_ms=100.0 * (i + 1),
                  status=502 if i == 9 else 200, tags="app:wiki,team:ops")
        )  # fmt: skip
    # gpu-2: four qwen requests from another group, untagged; one 429 refused.
    for i in range(4):
        log.record(
            trace(30, client="batch", node="gpu-2", served_model="qwen3:0.6b",
                  requested_model="qwen3:0.6b", ttft_ms=None, duration_ms=5.0,
                  status=429 if i == 0 else 200, tags="user:alice" if i else None)
        )  # fmt: skip
    log.record(trace(3 * 86400, tags="app:old"))  # outside the default windows
    log.close()
    return tmp_path


def test_list_json_csv_and_filters(state):
    rows = json.loads(herd_cli(state, "traces", "--json").stdout)
    assert len(rows) == 14
    assert rows == sorted(rows, key=lambda r: r["ts"])
    assert {r["tags"] for r in rows} == {"app:wiki,team:ops", "user:alice", None}
    out = herd_cli(state, "traces", "--csv", "--since", "7d").stdout
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert len(parsed) == 15 and "tags" in parsed[0] and "prompt" not in parsed[0]
    tagged = json.loads(herd_cli(state, "traces", "--tag", "team:ops", "--json").stdout)
    assert len(tagged) == 10
    # A tag matches whole tags only, not a part of one.
    assert json.loads(herd_cli(state, "traces", "--tag", "app", "--json").stdout) == []
    errors = json.loads(herd_cli(state, "traces", "--status", "error", "--json").stdout)
    assert sorted(r["status"] for r in errors) == [429, 502]
    five = json.loads(herd_cli(state, "traces", "--status", "5xx", "--json").stdout)
    assert [r["node"] for r in five] == ["gpu-1"]
    batch = herd_cli(state, "traces", "--group", "batch", "--model", "qwen3:0.6b",
                     "--json").stdout  # fmt: skip
    assert len(json.loads(batch)) == 4
    newest = json.loads(herd_cli(state, "traces", "--limit", "3", "--json").stdout)
    assert [r["id"] for r in newest] == [r["id"] for r in rows[-3:]]
    table = herd_cli(state, "traces", "--group", "batch").stdout
    assert table.splitlines()[0].split()[:3] == ["time", "group", "route"]
    assert "user:alice" in table


def test_stats_per_model_node_group_and_tag(state):
    result = herd_cli(state, "traces", "stats", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["total"]["count"] == 14 and stats["total"]["errors"] == 2
    by = {d: {e["key"]: e for e in entries} for d, entries in stats["by"].items()}
    llama = by["model"]["llama3.2:3b"]
    assert (llama["count"], llama["errors"], llama["error_rate"]) == (10, 1, 0.1)
    assert (llama["ttft_p50_ms"], llama["ttft_p95_ms"]) == (50.0, 100.0)
    assert (llama["duration_p50_ms"], llama["duration_p95_ms"]) == (500.0, 1000.0)
    assert by["model"]["qwen3:0.6b"]["ttft_p50_ms"] is None
    assert by["node"]["gpu-2"]["error_rate"] == 0.25
    assert set(by["group"]) == {"apps", "batch"}
    # A request with two tags counts under both; untagged ones are grouped too.
    assert by["tag"]["app:wiki"]["count"] == by["tag"]["team:ops"]["count"] == 10
    assert by["tag"]["user:alice"]["count"] == 3
    assert by["tag"]["(untagged)"]["count"] == 1
    assert by["tag"]["app:wiki"]["tokens_out"] == 200
    only_tags = json.loads(herd_cli(state, "traces", "stats", "--by", "tag",
                                    "--json").stdout)  # fmt: skip
    assert list(only_tags["by"]) == ["tag"]
    out = herd_cli(state, "traces", "stats", "--csv").stdout
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert parsed[0]["dimension"] == "total" and parsed[0]["count"] == "14"
    assert {r["dimension"] for r in parsed} == {
        "total",
        "model",
        "node",
        "group",
        "tag",
    }
    text = herd_cli(state, "traces", "stats", "--by", "node").stdout
    assert text.startswith("14 requests, 2 errors (14.3%)")
    assert "gpu-1" in text and "gpu-2" in text


def test_a_trace_store_from_before_tags_reads_as_untagged(tmp_path):
    with sqlite3.connect(tmp_path / "traces.db") as db:
        db.execute("CREATE TABLE _migrations (namespace TEXT PRIMARY KEY, version INT)")
        db.execute("INSERT INTO _migrations VALUES ('traces', 1)")
        db.execute(
            "CREATE TABLE traces (id INTEGER PRIMARY KEY, time TEXT, ts FLOAT, "
            "client TEXT, route TEXT, method TEXT, requested_model TEXT, "
            "served_model TEXT, node TEXT, status INTEGER, queue_ms FLOAT, "
            "ttft_ms FLOAT, duration_ms FLOAT, tokens_in INTEGER, "
            "tokens_out INTEGER, retries INTEGER, error_class TEXT)"
        )
        db.execute(
            "INSERT INTO traces (ts, client, route, method, status, duration_ms) "
            "VALUES (?, 'apps', '/api/chat', 'POST', 200, 3.0)",
            [time.time()],
        )
    stats = json.loads(herd_cli(tmp_path, "traces", "stats", "--json").stdout)
    assert stats["by"]["tag"] == [{**stats["total"], "key": "(untagged)"}]
    assert json.loads(herd_cli(tmp_path, "traces", "--tag", "x", "--json").stdout) == []
    # The router's writer adds the column when it opens the file.
    TraceLog(tmp_path).close()
    with sqlite3.connect(tmp_path / "traces.db") as db:
        assert "tags" in [r[1] for r in db.execute("PRAGMA table_info(traces)")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("traces", "--status", "teapot"), "--status 'teapot': expected a code"),
        (("traces", "--since", "soon"), "--since 'soon'"),
        (("traces", "--limit", "-1"), "--limit -1"),
        (("traces", "stats", "--by", "colour"), "invalid choice: 'colour'"),
    ],
)
def test_bad_options_are_one_line(state, args, message):
    result = herd_cli(state, *args)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_no_traces_yet(tmp_path):
    result = herd_cli(tmp_path, "traces", "stats")
    assert result.returncode == 1
    assert result.stderr.startswith("herd traces: no traces in")


def test_a_damaged_row_is_read_not_a_traceback(state):
    """A hand-edited or damaged traces.db may hold text in a figure, a blob in
    a name, a number in a group: every listing and summary still answers, the
    odd values shown as SQL quotes them (figures that are not numbers as
    none), and the damaged row counts as an error."""
    db = sqlite3.connect(state / "traces.db")
    db.execute(
        "UPDATE traces SET status = 'x', ttft_ms = X'00ff', tokens_in = 'lots',"
        " served_model = X'ff', client = 3.5, node = X'c3', tags = X'ff'"
        " WHERE id = (SELECT max(id) FROM traces)"
    )
    db.commit()
    db.close()
    rows = json.loads(herd_cli(state, "traces", "--json", "--since", "7d").stdout)
    damaged = max(rows, key=lambda r: r["id"])
    assert (damaged["status"], damaged["ttft_ms"], damaged["tokens_in"]) == (
        None, None, None
    )  # fmt: skip
    assert (damaged["served_model"], damaged["client"]) == ("X'FF'", "3.5")
    out = herd_cli(state, "traces", "--csv", "--since", "7d").stdout
    assert len(list(csv.DictReader(io.StringIO(out)))) == 15
    assert "X'C3'" in herd_cli(state, "traces", "--since", "7d").stdout
    summary = json.loads(
        herd_cli(state, "traces", "stats", "--since", "7d", "--json").stdout
    )
    assert summary["total"]["count"] == 15
    nodes = {b["key"]: b for b in summary["by"]["node"]}
    assert nodes["X'C3'"]["errors"] == 1 and nodes["X'C3'"]["tokens_in"] == 0
