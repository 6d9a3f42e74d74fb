"""Dashboard traffic aggregates over a real traces.db written by the router's
own TraceLog: buckets, percentiles, groups and tags, what is not counted, and
the rollup's answer against the exact aggregation of the same rows."""

from __future__ import annotations

import random
import sqlite3

import pytest

from herd.dashboard.traffic import traffic
from herd.ops.tracequery import Filters, open_traces, stats
from herd.router.observe import rollup
from herd.router.observe.traces import DB_NAME, Trace, TraceLog
from tests.dashboard.conftest import close

#: 50 s into a minute (buckets are whole minutes; the newest is under way).
NOW = 2_000_090.0


def trace(ts, client="ops", status=200, ttft=100.0, duration=200.0, tags=None,
          model="m", route="/api/chat"):  # fmt: skip
    return Trace(
        ts, client, route, "POST", model, model if status < 400 else None,
        "node-a", status, 0.0, ttft, duration, 3, 5, 0,
        None if status < 400 else "refused", "127.0.0.1", tags,
    )  # fmt: skip


def write(tmp_path, rows):
    log = TraceLog(tmp_path, clock=lambda: NOW)
    for row in rows:
        log.record(row)
    log.flush()
    log.close()


def test_no_database_is_reported_not_faked(tmp_path):
    body = traffic(tmp_path, NOW)
    assert body["available"] is False
    assert "traces.db" in body["reason"]


def test_buckets_percentiles_groups_and_tags(tmp_path):
    rows = [trace(NOW - 30, ttft=float(t), duration=10.0 * t) for t in range(1, 11)]
    rows += [trace(NOW - 90, client="apps", tags="app:wiki,team/ops")] * 3
    rows += [trace(NOW - 100, client="apps", status=404, ttft=None)]
    rows += [trace(NOW - 7200, client="apps", tags="app:wiki")] * 2  # day only
    rows += [trace(NOW - 2 * 86400)]  # older than a day: not counted
    # Not a model request (probe, dashboard poll): not counted.
    rows += [trace(NOW - 5, model=None, route="/dashboard/api/overview")] * 4
    write(tmp_path, rows)

    body = traffic(tmp_path, NOW)
    assert body["available"]
    hour, day = body["windows"]["hour"], body["windows"]["day"]
    assert hour["bucket_s"] == 60 and len(hour["series"]["t"]) == 60
    assert day["bucket_s"] == 900 and len(day["series"]["t"]) == 96
    assert hour["total"]["count"] == 14 and hour["total"]["errors"] == 1
    assert day["total"]["count"] == 16
    # The last minute holds the ten ops requests; the one before, the apps ones.
    series = hour["series"]
    assert series["requests"][-1] == 10 and series["rpm"][-1] == 10
    assert series["requests"][-2] == 4 and series["errors"][-2] == 1
    assert close(series["ttft_p50_ms"][-1], 5.0)
    assert close(series["ttft_p95_ms"][-1], 10.0)
    assert close(series["duration_p95_ms"][-1], 100.0)
    assert series["t"][-1] == NOW - 50 and hour["since"] == NOW - 50 - 59 * 60
    assert series["requests"][0] == 0 and series["ttft_p95_ms"][0] is None
    # rpm over the day is per minute, not per 15-minute bucket.
    assert day["series"]["requests"][-1] == 14
    assert day["series"]["rpm"][-1] == round(14 / 15, 3)

    groups = {g["key"]: g for g in hour["by_group"]}
    assert groups["ops"]["count"] == 10 and groups["apps"]["count"] == 4
    assert groups["apps"]["errors"] == 1 and groups["apps"]["error_rate"] == 0.25
    assert groups["ops"]["tokens_in"] == 30 and groups["ops"]["tokens_out"] == 50
    tags = {t["key"]: t["count"] for t in hour["by_tag"]}
    assert tags == {"app:wiki": 3, "team/ops": 3, "(untagged)": 11}
    assert {t["key"]: t["count"] for t in day["by_tag"]}["app:wiki"] == 5
    assert [m["key"] for m in hour["by_model"]] == ["m"]


def rows_of(seed: int, count: int) -> list[Trace]:
    """`count` model requests over the last 26 hours, of mixed groups, tags,
    models and outcomes, latencies spread from 0.01 ms to an hour."""
    pick = random.Random(seed)
    found = []
    for _ in range(count):
        status = pick.choice((200, 200, 200, 200, 404, 503))
        ttft = None if pick.random() < 0.1 else 10 ** pick.uniform(-2, 6.6)
        row = trace(
            NOW - pick.uniform(0, 26 * 3600),
            client=pick.choice(("ops", "apps", None)),
            status=status,
            ttft=ttft,
            duration=10 ** pick.uniform(-1, 5),
            tags=pick.choice((None, "a", "a,b", "team/x")),
            model=pick.choice(("m1", "m2:3b")),
        )
        found.append(row._replace(tokens_in=pick.randint(0, 900)))
    return found


@pytest.mark.parametrize("batches,most", [(1, None), (7, None), (1, 97)])
def test_the_rollup_answers_as_the_rows_do(tmp_path, monkeypatch, batches, most):
    """Counts, errors and tokens equal the exact aggregation of the kept rows
    (herd traces stats over the same window), per window, bucket and key, and
    every percentile is within the histogram's error of the exact one (per
    key, over the window's quarter hours), whether the rows were rolled up by
    one refresh or by several, in one transaction or in many (`most`)."""
    if most:
        monkeypatch.setattr(rollup, "ROLL_MAX", most)
    rows = rows_of(batches, 3000)
    log = TraceLog(tmp_path, clock=lambda: NOW)
    size = len(rows) // batches + 1
    for at in range(0, len(rows), size):
        for row in rows[at : at + size]:
            log.record(row)
        log.flush()
        body = traffic(tmp_path, NOW)  # each refresh rolls up what is new
    log.close()
    conn = open_traces(tmp_path)
    try:
        for name in ("hour", "day"):
            got = body["windows"][name]
            step, since = got["bucket_s"], got["since"]
            exact = stats(conn, Filters(since=since, until=NOW + 60))
            quarter = since // rollup.QUARTER_S * rollup.QUARTER_S
            quarters = stats(conn, Filters(since=quarter, until=NOW + 60))
            compare(got["total"], exact["total"], exact["total"])
            for dimension in ("group", "model", "tag"):
                keys = {k["key"]: k for k in exact["by"][dimension]}
                spans = {k["key"]: k for k in quarters["by"][dimension]}
                assert [k["key"] for k in got[f"by_{dimension}"]] == list(keys)
                for key in got[f"by_{dimension}"]:
                    compare(key, keys[key["key"]], spans[key["key"]])
            for i in (0, len(got["series"]["t"]) // 2, -2, -1):
                t = got["series"]["t"][i]
                one = stats(conn, Filters(since=t, until=t + step))["total"]
                bucket = {k: v[i] for k, v in got["series"].items()}
                bucket["count"] = bucket["requests"]
                compare(bucket, {k: one[k] for k in ("count", "errors")}, one)
    finally:
        conn.close()


def compare(got: dict, exact: dict, percentiles: dict) -> None:
    """Figures as `exact` has them, percentiles within the histogram's error
    of `percentiles`'."""
    for figure, value in exact.items():
        if figure.endswith("_ms"):
            assert close(got[figure], percentiles[figure]), (figure, got, percentiles)
        elif figure != "key":
            assert got[figure] == value, (figure, got, exact)
    for figure, value in percentiles.items():
        if figure.endswith("_ms"):
            assert close(got[figure], value), (figure, got, percentiles)


def test_pruning_drops_whole_quarters_of_rows_and_rollup_alike(tmp_path):
    """After pruning, the rollup still matches the rows kept: the cutoff falls
    on a quarter hour, so no minute or quarter is half counted."""
    rows = rows_of(3, 1000)
    clock = [NOW]
    log = TraceLog(tmp_path, clock=lambda: clock[0], retention_days=lambda: 1)
    for row in rows:
        log.record(row)
    log.flush()
    traffic(tmp_path, NOW)  # rolls up the last day
    clock[0] = NOW + 3600 + 17  # prunes the traces older than NOW - 23 h + 17 s
    assert log.prune() > 0
    log.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    try:
        (oldest,) = conn.execute("SELECT min(ts) FROM traces").fetchone()
        kept = conn.execute(
            "SELECT count(*), sum(tokens_in), count(duration_ms) FROM traces"
        ).fetchone()
        rolled = conn.execute(
            "SELECT sum(requests), sum(tokens_in),"
            " (SELECT sum(n) FROM traffic_latency_minutes WHERE metric = 1)"
            " FROM traffic_minutes"
        ).fetchone()
        (keyed,) = conn.execute(
            "SELECT sum(n) FROM traffic_latency WHERE metric = 1"
        ).fetchone()
        first = conn.execute(
            "SELECT (SELECT min(minute) FROM traffic_minutes),"
            " (SELECT min(minute) FROM traffic_latency_minutes),"
            " (SELECT min(slot) FROM traffic_latency)"
        ).fetchone()
    finally:
        conn.close()
    assert kept == rolled and keyed == kept[2]
    cutoff = (NOW + 3600 + 17 - 86400) // 900 * 900
    assert cutoff <= oldest
    assert first == (oldest // 60 * 60, oldest // 60 * 60, oldest // 900 * 900)


def test_a_prune_that_empties_the_traces_starts_the_rollup_over(tmp_path):
    """SQLite numbers traces from 1 again once none is left: the rollup's
    mark goes back to 0 with them, so the new traces are counted."""
    log = TraceLog(tmp_path, clock=lambda: NOW + 10 * 86400, retention_days=lambda: 1)
    log.record(trace(NOW))
    log.flush()
    assert log.prune() == 1
    log.record(trace(NOW + 10 * 86400 - 5))
    log.flush()
    log.close()
    body = traffic(tmp_path, NOW + 10 * 86400)
    assert body["windows"]["hour"]["total"]["count"] == 1


def test_an_old_traces_db_is_rolled_up_when_upgraded(tmp_path):
    """A traces.db from before the rollup (schema v3) gets it filled from the
    rows it keeps, so an upgraded router shows its history at once."""
    from herd.router.observe import traces as module
    from herd.store import Store

    rows = rows_of(4, 500)
    store = Store(tmp_path, db_name=DB_NAME)
    store.ensure("traces", module.MIGRATIONS[:3])
    with store.transaction() as db:
        for row in rows:
            db.conn.execute(module._INSERT, row)
    store.close()
    before = stats_of(tmp_path)
    log = TraceLog(tmp_path, clock=lambda: NOW)
    log.record(rows[0])
    log.flush()  # migrates, then writes one more row
    log.close()
    body = traffic(tmp_path, NOW)
    assert body["windows"]["day"]["total"]["count"] == before["day"] + 1
    assert body["windows"]["hour"]["total"]["count"] == before["hour"] + (
        rows[0].ts >= body["windows"]["hour"]["since"]
    )


def stats_of(state_dir) -> dict[str, int]:
    """Model requests in each window, counted from the rows."""
    conn = open_traces(state_dir)
    try:
        found = {}
        for name, (span, step) in (("hour", (3600, 60)), ("day", (86400, 900))):
            since = NOW // step * step - span + step
            found[name] = stats(conn, Filters(since=since))["total"]["count"]
        return found
    finally:
        conn.close()
