"""A loop-stall probe for benchmarks: how long a worker's event loop goes deaf.

With `HERD_STALL_PROBE=FILE` in its environment, a router worker runs one
extra greenlet that sleeps PERIOD_S in a loop; a wake-up later than asked is
a stall: for that long no ready greenlet could run, so a request arriving
then waited too. Each stall is counted in a histogram of its overshoot, split
by where the worker's CPU time went meanwhile (`time.thread_time` of the loop
thread, `time.process_time` of the whole worker):

- loop: the loop's thread ran for at least half the stall (other greenlets,
  the loop's callbacks, the garbage collector): work on the loop;
- thread: another thread of the worker did (a native writer thread holding
  the GIL, such as the trace writer's);
- off: neither: the process was not running (the OS gave the CPU to another
  process: machine noise, not the router's doing).

Who held the loop: every greenlet switch is traced (`greenlet.settrace`) and
each run's CPU time on the loop's thread goes into a histogram under the name
of the greenlet's function ("hub" for the loop's own callbacks: I/O, timers),
so a long run is pinned on the poller, the trace writer, a request, etc.

Garbage collections are timed too (`gc.callbacks`), per generation. Every
DUMP_S the cumulative figures are written to FILE as JSON (replaced
atomically, suffixed with the worker's pid), so a benchmark reads them before
and after a run and keeps the difference (`diff`). The probe costs about
PERIOD_S⁻¹ wake-ups a second (~1 % of a core): off unless asked for.
"""

from __future__ import annotations

import gc
import json
import os
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

PERIOD_S = 0.001
DUMP_S = 0.5
#: Upper bounds of the histogram's buckets, in milliseconds (the last: more).
EDGES_MS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
#: Where a stall's time went (see the module docstring).
KINDS = ("loop", "thread", "off")
LABELS = tuple(f"<={e:g}" for e in EDGES_MS) + (f">{EDGES_MS[-1]:g}",)


def _histogram() -> list[int]:
    return [0] * (len(EDGES_MS) + 1)


class StallProbe:
    """Counts loop stalls (overshoot of a PERIOD_S sleep) and GC pauses."""

    def __init__(self, path: str | None = None, clock: Callable[[], float] = None):
        self.path = path
        self._clock = clock or time.perf_counter
        self.wakeups = 0
        self.loop = _histogram()
        self.thread = _histogram()
        self.off = _histogram()
        self.overshoot_ms = 0.0
        self.gc = {gen: _histogram() for gen in (0, 1, 2)}
        self.gc_ms = [0.0, 0.0, 0.0]
        self._gc_start = self._gc_cpu = 0.0
        #: CPU time of the collections (wall time can include the OS's).
        self.gc_cpu_ms = [0.0, 0.0, 0.0]
        #: The most objects one collection of each generation freed.
        self.gc_objects = [0, 0, 0]
        #: Greenlet name -> histogram of its runs' CPU time on the loop.
        self.runs: dict[str, list[int]] = {}
        self.run_ms: dict[str, float] = {}
        self._switched = 0.0
        self._names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def stall(self, overshoot_s: float, loop_cpu_s: float, other_cpu_s: float) -> None:
        """One wake-up `overshoot_s` late; over the whole sleep the loop's
        thread used `loop_cpu_s` of CPU and the worker's other threads
        `other_cpu_s`."""
        self.wakeups += 1
        ms = overshoot_s * 1000.0
        self.overshoot_ms += ms
        slot = bisect_left(EDGES_MS, ms)
        if other_cpu_s >= 0.5 * overshoot_s:
            self.thread[slot] += 1
        elif loop_cpu_s >= 0.5 * overshoot_s:
            self.loop[slot] += 1
        else:
            self.off[slot] += 1

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """A `gc.callbacks` entry: time each collection."""
        if phase == "start":
            self._gc_start, self._gc_cpu = self._clock(), time.thread_time()
            return
        ms = (self._clock() - self._gc_start) * 1000.0
        gen = info.get("generation", 0)
        self.gc[gen][bisect_left(EDGES_MS, ms)] += 1
        self.gc_ms[gen] += ms
        self.gc_cpu_ms[gen] += (time.thread_time() - self._gc_cpu) * 1000.0
        self.gc_objects[gen] = max(self.gc_objects[gen], info.get("collected", 0))

    def on_switch(self, event: str, args: Any) -> None:
        """A `greenlet.settrace` entry: charge the CPU time since the last
        switch to the greenlet switched away from."""
        if event not in ("switch", "throw"):
            return
        now = time.thread_time()
        ms = (now - self._switched) * 1000.0
        self._switched = now
        origin, target = args
        names = self._names
        if target not in names:  # named when first run: gevent drops `_run` at the end
            names[target] = _name(target)
        name = names.get(origin) or _name(origin)
        hist = self.runs.get(name)
        if hist is None:
            hist = self.runs[name] = _histogram()
            self.run_ms[name] = 0.0
        hist[bisect_left(EDGES_MS, ms)] += 1
        self.run_ms[name] += ms

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "wakeups": self.wakeups,
            **{key: list(getattr(self, key)) for key in KINDS},
            "overshoot_ms": self.overshoot_ms,
            "gc": {str(g): list(h) for g, h in self.gc.items()},
            "gc_ms": list(self.gc_ms),
            "gc_cpu_ms": list(self.gc_cpu_ms),
            "gc_objects": list(self.gc_objects),
            "runs": {name: list(h) for name, h in self.runs.items()},
            "run_ms": dict(self.run_ms),
        }

    def dump(self, run: Callable[..., Any] | None = None) -> None:
        """Write the snapshot to `path`.PID; `run(fn, args)` runs the file
        work (the probe passes its hub's thread pool: a file write on the
        loop would be a stall of the probe's own making)."""
        if not self.path:
            return
        target = f"{self.path}.{os.getpid()}"
        text = json.dumps(self.snapshot())
        if run is None:
            _replace(target, text)
        else:
            run(_replace, (target, text))

    def run(self, stopped: Callable[[], bool]) -> None:
        """Sleep PERIOD_S in a loop and count the overshoots (a greenlet)."""
        import gevent
        import greenlet

        gc.callbacks.append(self.on_gc)
        self._switched = time.thread_time()
        previous = greenlet.settrace(self.on_switch)
        clock, sleep = self._clock, gevent.sleep
        mine, ours = time.thread_time, time.process_time
        last_dump = clock()
        try:
            while not stopped():
                began, loop0, all0 = clock(), mine(), ours()
                sleep(PERIOD_S)
                now, loop1, all1 = clock(), mine(), ours()
                loop_cpu = loop1 - loop0
                self.stall(
                    max(0.0, now - began - PERIOD_S), loop_cpu, all1 - all0 - loop_cpu
                )
                if now - last_dump >= DUMP_S:
                    last_dump = now
                    self.dump(gevent.get_hub().threadpool.apply)
        finally:
            greenlet.settrace(previous)
            gc.callbacks.remove(self.on_gc)
            self.dump()


def _replace(target: str, text: str) -> None:
    temp = target + ".tmp"
    with open(temp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(temp, target)


def _name(glet: Any) -> str:
    """A greenlet's kind: its function's qualified name, or "hub"."""
    run = getattr(glet, "_run", None) or getattr(glet, "run", None)
    if type(glet).__name__ == "Hub":
        return "hub"
    run = getattr(run, "__func__", run)
    owner = getattr(getattr(glet, "_run", None), "__self__", None)
    name = getattr(run, "__qualname__", None) or type(glet).__name__
    if owner is not None and "." not in name:
        name = f"{type(owner).__name__}.{name}"
    return name


def start_from_env(stopped: Callable[[], bool] = lambda: False) -> Any:
    """In a worker: start the probe greenlet if HERD_STALL_PROBE names a file."""
    from herd.settings import STALL_PROBE

    path = STALL_PROBE.resolve()
    if not path:
        return None
    import gevent

    return gevent.spawn(StallProbe(path).run, stopped)


def diff(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two snapshots of the same worker."""
    if not before or before.get("pid") != after.get("pid"):
        return after
    out = dict(after)
    out["wakeups"] = after["wakeups"] - before["wakeups"]
    for key in KINDS:
        out[key] = [a - b for a, b in zip(after[key], before[key], strict=True)]
    out["overshoot_ms"] = after["overshoot_ms"] - before["overshoot_ms"]
    out["gc"] = {
        g: [a - b for a, b in zip(after["gc"][g], before["gc"][g], strict=True)]
        for g in after["gc"]
    }
    for key in ("gc_ms", "gc_cpu_ms"):
        if key in after and key in before:
            out[key] = [a - b for a, b in zip(after[key], before[key], strict=True)]
    empty = _histogram()
    out["runs"] = {
        name: [a - b for a, b in zip(h, before["runs"].get(name, empty), strict=True)]
        for name, h in after["runs"].items()
    }
    out["run_ms"] = {
        name: ms - before["run_ms"].get(name, 0.0)
        for name, ms in after["run_ms"].items()
    }
    return out
