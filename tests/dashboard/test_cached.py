"""herd.dashboard.cached: computed in gevent's thread pool (the event loop
keeps running meanwhile), once for concurrent callers, reused for its TTL."""

from __future__ import annotations

import threading
import time

import gevent


def test_computes_off_the_loop_once_for_concurrent_callers():
    from herd.dashboard.cached import Cached

    loop_thread = threading.get_ident()
    release = threading.Event()
    seen = []

    def compute():
        # A slow query: blocks its thread, not the loop, which meanwhile runs
        # the ticker that releases it.
        seen.append((threading.get_ident(), release.wait(3)))
        return {"rows": 3}

    clock = [100.0]
    cached = Cached(compute, ttl_s=5, clock=lambda: clock[0])
    ticks = []

    def ticker():
        while len(ticks) < 3:  # bounded: the loop must run while compute waits
            ticks.append(1)
            gevent.sleep(0.01)
        release.set()

    callers = [gevent.spawn(cached.get) for _ in range(5)]
    gevent.joinall([gevent.spawn(ticker), *callers], timeout=60)  # a bound
    assert [c.value for c in callers] == [{"rows": 3}] * 5
    assert len(ticks) == 3 and cached.computed == 1
    assert seen == [(seen[0][0], True)] and seen[0][0] != loop_thread

    clock[0] += 4.9
    assert cached.get() == {"rows": 3} and cached.computed == 1
    clock[0] += 0.2
    cached.get()
    assert cached.computed == 2


def test_a_failure_is_raised_to_the_caller_and_not_cached():
    from herd.dashboard.cached import Cached

    calls = []

    def compute():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError("disk gone")
        return 7

    cached = Cached(compute, ttl_s=60)
    try:
        cached.get()
    except OSError as ex:
        assert "disk gone" in str(ex)
    else:
        raise AssertionError("the failure was swallowed")
    assert cached.get() == 7


def test_none_is_an_answer_kept_for_the_ttl():
    """ "No traces.db yet" is computed as None: it was recomputed on every call."""
    from herd.dashboard.cached import Cached

    clock = [0.0]
    cached = Cached(lambda: None, ttl_s=5, clock=lambda: clock[0], in_thread=False)
    assert cached.get() is None and cached.get() is None
    assert cached.computed == 1
    clock[0] += 5
    cached.get()
    assert cached.computed == 2
