"""traces.db aggregates for the health checks, over a real SQLite database
written by the router's own TraceLog."""

from __future__ import annotations

from herd.health.tracestats import p95, trace_facts
from herd.router.observe.traces import Trace, TraceLog

NOW = 1_000_000.0


def trace(ts: float, status: int = 200, ttft: float | None = 100.0, model="m"):
    return Trace(
        ts,
        "ops",
        "/api/chat",
        "POST",
        model,
        model,
        "a",
        status,
        0.0,
        ttft,
        200.0,
        1,
        1,
        0,
        None if status < 500 else "node_error",
    )


def test_p95_nearest_rank():
    assert p95([]) is None
    assert p95(list(range(1, 101))) == 95
    assert p95([7.0]) == 7.0


def test_error_rate_ttft_and_age(tmp_path):
    log = TraceLog(tmp_path, clock=lambda: NOW)
    rows = [trace(NOW - 3600 * h, ttft=100.0) for h in range(1, 61)]
    rows += [trace(NOW - 10 - i, ttft=300.0) for i in range(18)]
    rows += [trace(NOW - 20, status=502, ttft=None), trace(NOW - 21, status=503)]
    rows.append(trace(NOW - 40 * 86400))  # beyond retention
    for row in rows:
        log.record(row)
    log.flush()
    log.close()
    facts = trace_facts(tmp_path, NOW, retention_days=30)
    assert (facts.recent_total, facts.recent_errors) == (20, 2)
    assert "node a" in facts.worst
    (m,) = facts.ttft
    assert (m.recent_p95_ms, m.recent_count) == (300.0, 18)
    assert (m.baseline_p95_ms, m.baseline_count) == (100.0, 24)
    assert facts.oldest_age_s >= 40 * 86400
    assert facts.db_bytes > 0


def test_no_database_is_none(tmp_path):
    assert trace_facts(tmp_path, NOW, 30) is None


def test_baselines_of_several_models_in_one_bounded_pass(tmp_path, monkeypatch):
    """Each model's baseline p95 is its own nearest rank (one query ranks
    them all), and a day with more rows than BASELINE_ROWS_MAX is sampled:
    the p95 still holds, from fewer rows."""
    from herd.health import tracestats

    log = TraceLog(tmp_path, clock=lambda: NOW)
    for i in range(400):
        ts = NOW - 600 - i * 60
        log.record(trace(ts, ttft=float(i % 100 + 1), model="a"))
        log.record(trace(ts, ttft=float(1000 + i % 20), model="b"))
        log.record(trace(ts, ttft=None, model="c"))  # no TTFT: no baseline
    for i in range(12):
        for model in "abc":
            log.record(trace(NOW - 10 - i, ttft=50.0, model=model))
    log.flush()
    log.close()
    facts = {f.model: f for f in trace_facts(tmp_path, NOW, 30).ttft}
    assert (facts["a"].baseline_p95_ms, facts["a"].baseline_count) == (95.0, 400)
    assert (facts["b"].baseline_p95_ms, facts["b"].baseline_count) == (1018.0, 400)
    assert facts["c"].recent_count == 0 or facts["c"].baseline_count == 0
    monkeypatch.setattr(tracestats, "BASELINE_ROWS_MAX", 300)
    sampled = {f.model: f for f in trace_facts(tmp_path, NOW, 30).ttft}
    assert 50 <= sampled["a"].baseline_count <= 150
    assert 85.0 <= sampled["a"].baseline_p95_ms <= 100.0
    assert sampled["b"].baseline_p95_ms >= 1015.0
