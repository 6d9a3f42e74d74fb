"""Dashboard traffic aggregates over a real traces.db written by the router's
own TraceLog: buckets, percentiles, groups and tags, and what is not counted."""

from __future__ import annotations

from herd.dashboard.traffic import traffic
from herd.router.observe.traces import Trace, TraceLog

NOW = 2_000_000.0


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
    assert series["ttft_p50_ms"][-1] == 5.0 and series["ttft_p95_ms"][-1] == 10.0
    assert series["duration_p95_ms"][-1] == 100.0
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


def test_a_big_window_samples_percentiles_but_counts_exactly(tmp_path, monkeypatch):
    from herd.dashboard import traffic as module

    write(tmp_path, [trace(NOW - 10 - i % 50, ttft=float(i)) for i in range(400)])
    monkeypatch.setattr(module, "SAMPLE_MAX", 100)
    hour = traffic(tmp_path, NOW)["windows"]["hour"]
    assert hour["sampled_every"] == 4
    assert hour["total"]["count"] == 400 and hour["total"]["tokens_in"] == 1200
    assert sum(hour["series"]["requests"]) == 400
    # A sample of every 4th trace by id still spans the whole range.
    assert 180 <= hour["total"]["ttft_p50_ms"] <= 220
    assert hour["total"]["ttft_p95_ms"] >= 370
