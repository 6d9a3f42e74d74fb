"""Each health check over hand-built snapshots: the finding it must raise, the
healthy case that must pass, and "unknown" (never a pass) without the facts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from herd.health import checks
from herd.health.snapshot import (
    AgentFacts,
    ModelFacts,
    NodeFacts,
    ScrubFacts,
    Snapshot,
    TraceFacts,
    TtftFacts,
)

GB = 1024**3


def agent(**metrics) -> AgentFacts:
    base = {
        "memory": {"total": 64 * GB, "available": 40 * GB, "pressure_avg10": 0.0},
        "swap": {"in_per_s": 0.0, "out_per_s": 0.0},
        "disk": {"path": "/var/lib/ollama", "total": 1000 * GB, "free": 500 * GB},
    }
    base.update(metrics)
    return AgentFacts(heartbeat_age_s=2, interval_s=5, metrics=base, clock_skew_s=0.4)


def traces(**kw) -> TraceFacts:
    base = dict(
        recent_total=100,
        recent_errors=0,
        worst=None,
        ttft=(),
        db_bytes=10_000,
        oldest_age_s=3600.0,
        retention_days=30,
        dropped=0,
        write_failures=0,
    )
    base.update(kw)
    return TraceFacts(**base)


def healthy(**kw) -> Snapshot:
    base = dict(
        source="router",
        fleet="f",
        nodes=(
            NodeFacts("a", "up", agent=agent(), max_concurrency=2, waiting=0),
            NodeFacts("b", "up", agent=agent(), max_concurrency=2, waiting=0),
        ),
        models=(
            ModelFacts("m", ("a", "b"), ("a", "b"), ("a",), keep_loaded=False),
            ModelFacts("k", ("a",), ("a",), ("a",), keep_loaded=True),
        ),
        revision_applied=3,
        revision_served=3,
        applied_age_s=100.0,
        traces=traces(),
        scrub=ScrubFacts("/s", blobs=4, verified=4, last_tick_age_s=1, full_passes=1),
    )
    base.update(kw)
    return Snapshot(**base)


def node(s: Snapshot, name: str, **kw) -> Snapshot:
    return replace(
        s, nodes=tuple(replace(n, **kw) if n.name == name else n for n in s.nodes)
    )


def found(s: Snapshot, check: str) -> list[checks.Finding]:
    return list(dict(checks.CHECKS)[check](s))


def test_a_healthy_fleet_passes_every_check():
    result = checks.run(healthy())
    assert result["findings"] == []
    assert result["status"] == "ok"
    assert result["passed"] == [c for c, _ in checks.CHECKS]


def test_every_finding_has_the_four_fields():
    result = checks.run(Snapshot("state-dir", "f", live=False))
    assert result["findings"]
    for f in result["findings"]:
        assert set(f) == {"id", "severity", "finding", "action"}
        assert f["severity"] in checks.SEVERITIES
        assert "\n" not in f["finding"] and f["action"]


def test_without_a_router_node_checks_are_unknown_not_passed():
    s = Snapshot("state-dir", "f", nodes=(NodeFacts("a", "unknown"),), live=False)
    result = checks.run(s)
    for check in ("node_down", "agent_silent", "model_nowhere", "keep_loaded"):
        assert check not in result["passed"]
    for check in ("memory", "disk", "queue", "clock_skew", "revision", "ttft"):
        assert check not in result["passed"], check
    assert result["status"] == "unknown"


def test_node_down_is_critical_and_named():
    (f,) = found(node(healthy(), "b", state="down", last_error="refused"), "node_down")
    assert f.severity == "critical" and "b" in f.finding and "refused" in f.finding
    (f,) = found(node(healthy(), "b", state="unknown"), "node_down")
    assert f.severity == "unknown"


@pytest.mark.parametrize("check", ["agent_silent", "memory", "disk", "clock_skew"])
def test_agent_checks_are_unknown_without_an_agent(check):
    s = node(healthy(), "b", agent=None)
    (f,) = found(s, check)
    assert f.severity == "unknown" and "b" in f.finding and "a," not in f.finding


def test_agent_silent():
    silent = replace(agent(), heartbeat_age_s=30)
    (f,) = found(node(healthy(), "a", agent=silent), "agent_silent")
    assert f.severity == "warning" and "30 s" in f.finding
    (f,) = found(node(healthy(), "a", agent=None, agent_lost_s=60), "agent_silent")
    assert f.severity == "warning" and "stopped reporting" in f.finding


def test_model_declared_but_on_no_node():
    s = replace(healthy(), models=(ModelFacts("m", ("a", "b"), (), ()),))
    (f,) = found(s, "model_nowhere")
    assert f.severity == "critical" and "m" in f.finding
    # Its node is down: where it is cannot be known.
    (f,) = found(node(s, "b", state="down"), "model_nowhere")
    assert f.severity == "unknown"


def test_keep_loaded_model_not_loaded():
    s = replace(healthy(), models=(ModelFacts("k", ("a",), ("a",), (), True),))
    (f,) = found(s, "keep_loaded")
    assert f.severity == "warning" and "k" in f.finding and "a" in f.finding
    not_kept = replace(s, models=(ModelFacts("k", ("a",), ("a",), (), False),))
    assert found(not_kept, "keep_loaded") == []


def test_memory_pressure_and_swap():
    pressed = agent(memory={"total": 64 * GB, "available": GB, "pressure_avg10": 55})
    (f,) = found(node(healthy(), "a", agent=pressed), "memory")
    assert f.severity == "critical" and "pressure 55%" in f.finding
    swapping = agent(swap={"in_per_s": 3 * 1024**2, "out_per_s": 0})
    (f,) = found(node(healthy(), "a", agent=swapping), "memory")
    assert f.severity == "warning" and "swapping" in f.finding
    assert found(node(healthy(), "a", agent=agent(memory={})), "memory")[
        0
    ].severity == ("unknown")


def test_model_store_disk_over_90_percent():
    full = agent(disk={"path": "/m", "total": 100 * GB, "free": 8 * GB})
    (f,) = found(node(healthy(), "a", agent=full), "disk")
    assert f.severity == "warning" and "92%" in f.finding
    fuller = agent(disk={"path": "/m", "total": 100 * GB, "free": 1 * GB})
    assert found(node(healthy(), "a", agent=fuller), "disk")[0].severity == "critical"


def test_error_rate_over_5_percent():
    s = replace(healthy(), traces=traces(recent_errors=6, worst="node b, model m (6)"))
    (f,) = found(s, "error_rate")
    assert f.severity == "warning" and "6%" in f.finding and "node b" in f.finding
    assert found(replace(s, traces=traces(recent_errors=5)), "error_rate") == []
    few = traces(recent_total=10, recent_errors=5)
    assert found(replace(s, traces=few), "error_rate") == []
    assert found(replace(s, traces=None), "error_rate")[0].severity == "unknown"


def test_ttft_doubled_against_baseline():
    slow = TtftFacts("m", 900.0, 40, 400.0, 1000)
    (f,) = found(replace(healthy(), traces=traces(ttft=(slow,))), "ttft")
    assert f.severity == "warning" and "2.2x" in f.finding
    fine = TtftFacts("m", 700.0, 40, 400.0, 1000)
    assert found(replace(healthy(), traces=traces(ttft=(fine,))), "ttft") == []
    thin = TtftFacts("m", 900.0, 40, 400.0, 5)  # too little baseline to judge
    assert found(replace(healthy(), traces=traces(ttft=(thin,))), "ttft") == []


def test_queue_saturated_for_a_minute():
    (f,) = found(node(healthy(), "a", waiting=5, saturated_s=75), "queue")
    assert f.severity == "warning" and "75 s" in f.finding
    assert found(node(healthy(), "a", waiting=5, saturated_s=20), "queue") == []


def test_trace_store_size_and_overdue_retention():
    big = traces(db_bytes=3 * GB)
    (f,) = found(replace(healthy(), traces=big), "trace_store")
    assert "3.0 GB" in f.finding
    old = traces(oldest_age_s=40 * 86400)
    (f,) = found(replace(healthy(), traces=old), "trace_store")
    assert "overdue" in f.finding
    assert (
        found(replace(healthy(), traces=traces(oldest_age_s=31 * 86400)), "trace_store")
        == []
    )


def test_revision_applied_but_not_served():
    s = replace(healthy(), revision_applied=4, reload_error="nodes[0].url: bad")
    (f,) = found(s, "revision")
    assert f.severity == "critical" and "4" in f.finding and "bad" in f.finding
    # Just applied, no error: the router picks it up within a second.
    assert found(replace(s, reload_error=None, applied_age_s=1), "revision") == []
    assert found(replace(s, revision_served=None), "revision")[0].severity == "unknown"


def test_clock_skew():
    skewed = replace(agent(), clock_skew_s=-8.0)
    (f,) = found(node(healthy(), "a", agent=skewed), "clock_skew")
    assert f.severity == "warning" and "-8 s" in f.finding
    far = replace(agent(), clock_skew_s=20.0)
    assert found(node(healthy(), "a", agent=far), "clock_skew")[0].severity == (
        "critical"
    )
    # An agent that does not send its clock: unknown, not fine.
    quiet = replace(agent(), clock_skew_s=None)
    assert found(node(healthy(), "a", agent=quiet), "clock_skew")[0].severity == (
        "unknown"
    )


def test_bundle_store_mismatch_is_critical():
    scrub = ScrubFacts("/s", 4, 3, mismatches=("sha256:" + "ab" * 32,))
    (f,) = found(replace(healthy(), scrub=scrub), "bundle_store")
    assert f.severity == "critical" and "sha256:abababababab" in f.finding
    assert found(replace(healthy(), scrub=None), "bundle_store")[0].severity == (
        "unknown"
    )
    stalled = replace(healthy().scrub, last_tick_age_s=7200)
    assert found(replace(healthy(), scrub=stalled), "bundle_store")[0].severity == (
        "warning"
    )


def test_run_sorts_worst_first_and_sets_status():
    s = node(node(healthy(), "b", state="down"), "a", agent=None)
    result = checks.run(s)
    assert result["status"] == "critical"
    severities = [f["severity"] for f in result["findings"]]
    assert severities == sorted(severities, key=checks.SEVERITIES.index)
