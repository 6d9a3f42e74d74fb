"""The router-side monitor over a real in-process router app: queue saturation
measured across background samples, and the snapshot it hands the checks."""

from __future__ import annotations

from herd.health import checks
from herd.health.gather import Monitor, saturated
from herd.manifest.model import build_fleet
from herd.router.app import create_app
from herd.router.observe.traces import TraceLog
from herd.router.reload import StaticSource
from herd.router.routing.proxy import Upstream


def app_with_one_node(tmp_path, **node):
    """The router app in-process over one node nothing listens on, and its
    TraceLog (the caller closes it)."""
    fleet = build_fleet(
        {
            "metadata": {"name": "f"},
            "nodes": [{"name": "a", "url": "http://127.0.0.1:9", **node}],
            "models": [{"name": "m", "place": {"nodes": ["a"]}}],
        }
    )
    traces = TraceLog(tmp_path)
    return create_app(StaticSource(fleet), traces, Upstream(), background=False), traces


def test_saturated_means_all_slots_busy_and_more_waiting():
    assert saturated(in_flight=2, waiting=3, limit=2, depth=8)
    assert not saturated(in_flight=2, waiting=2, limit=2, depth=8)
    assert not saturated(in_flight=1, waiting=5, limit=2, depth=8)
    assert saturated(in_flight=2, waiting=1, limit=2, depth=1)  # queue full
    assert not saturated(in_flight=2, waiting=0, limit=2, depth=0)


def test_queue_saturated_for_a_minute_across_samples(tmp_path):
    app, traces = app_with_one_node(tmp_path, max_concurrency=2)
    rt = app.herd_runtime
    now = [1000.0]
    rt.monotonic = lambda: now[0]
    monitor = Monitor(rt, tmp_path)
    slots = rt.queues.slots("a")
    slots.in_flight, slots.waiting = 2, 3
    monitor.sample()
    now[0] += 30
    monitor.sample()
    snap = monitor.snapshot(rt.served())
    assert snap.nodes[0].saturated_s == 30
    assert not list(checks.queue(snap))
    now[0] += 40
    monitor.sample()
    (finding,) = checks.queue(monitor.snapshot(rt.served()))
    assert "70 s" in finding.finding and finding.severity == "warning"
    slots.waiting = 0  # one sample below: the minute starts again
    monitor.sample()
    slots.waiting = 3
    monitor.sample()
    assert not list(checks.queue(monitor.snapshot(rt.served())))
    # Never polled: unknown, not up.
    assert snap.nodes[0].state == "unknown"
    traces.close()


def test_concurrent_snapshots_run_one_traces_query(tmp_path, monkeypatch):
    """A burst of /dashboard/api/health polls once the traces cache expired
    used to start one traces.db query each (one pool thread each, all at
    once): now one runs and the others wait for its result."""
    import threading

    import gevent

    from herd.health import gather

    app, traces = app_with_one_node(tmp_path)
    rt = app.herd_runtime
    now = [1000.0]
    rt.monotonic = lambda: now[0]
    release = threading.Event()
    queries = []

    def slow_query(state_dir, at, retention_days):
        queries.append(threading.get_ident())
        release.wait(5)  # a slow aggregate: the other polls arrive meanwhile
        return None

    monkeypatch.setattr(gather, "trace_facts", slow_query)
    monitor = Monitor(rt, tmp_path)
    polls = [gevent.spawn(monitor.snapshot, rt.served()) for _ in range(6)]
    gevent.sleep(0.2)
    release.set()
    gevent.joinall(polls, timeout=30)  # a bound
    assert all(p.successful() for p in polls)
    assert len(queries) == 1
    monitor.snapshot(rt.served())
    assert len(queries) == 1  # within the TTL
    now[0] += gather.TRACES_TTL_S
    monitor.snapshot(rt.served())
    assert len(queries) == 2
    traces.close()
