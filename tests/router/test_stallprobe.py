"""The loop-stall probe the benchmarks use (herd.router.observe.stallprobe)."""

from __future__ import annotations

import json
import time

import gevent

from herd.router.observe import stallprobe
from herd.router.observe.stallprobe import EDGES_MS, StallProbe


def hog(cpu_s: float) -> None:
    """Hold the loop for `cpu_s` of CPU time (not wall time: the machine is shared)."""
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def test_a_greenlet_holding_the_loop_is_a_stall_charged_to_it(tmp_path):
    probe = StallProbe(str(tmp_path / "stalls"))
    stop = False
    runner = gevent.spawn(probe.run, lambda: stop)
    gevent.sleep(0.01)
    gevent.spawn(hog, 0.006).join()
    stop = True
    runner.join(5)
    over_5ms = EDGES_MS.index(5.0) + 1
    late = sum(sum(probe.snapshot()[kind][over_5ms:]) for kind in stallprobe.KINDS)
    assert late >= 1  # the probe's 1 ms sleep woke at least 6 ms late
    runs = probe.snapshot()["runs"]["hog"]
    assert sum(runs[over_5ms:]) == 1 and sum(runs) == 1
    (written,) = tmp_path.glob("stalls.*")  # dumped at exit, per worker pid
    assert json.loads(written.read_text())["runs"]["hog"] == runs


def test_stalls_are_classed_by_where_the_time_went():
    probe = StallProbe()
    probe.stall(0.004, loop_cpu_s=0.004, other_cpu_s=0.0)
    probe.stall(0.004, loop_cpu_s=0.0, other_cpu_s=0.003)
    probe.stall(0.004, loop_cpu_s=0.0, other_cpu_s=0.0)
    slot = EDGES_MS.index(5.0)
    assert [probe.snapshot()[k][slot] for k in stallprobe.KINDS] == [1, 1, 1]


def test_diff_keeps_what_happened_between_two_snapshots():
    probe = StallProbe()
    probe.stall(0.002, 0.002, 0.0)
    before = json.loads(json.dumps(probe.snapshot()))
    probe.stall(0.0005, 0.0005, 0.0)
    probe.on_gc("start", {"generation": 0})
    probe.on_gc("stop", {"generation": 0, "collected": 3})
    between = stallprobe.diff(before, probe.snapshot())
    assert between["wakeups"] == 1 and sum(between["loop"]) == 1
    assert sum(between["gc"]["0"]) == 1
