"""The trace writer's cost per request, in this process.

    python tests/bench/bench_traces.py [--rows 20000] [--repeat 5]

Two parts, each printed as medians (and min..max) of `--repeat` interleaved
runs, and as ratios against a baseline measured in the same run, so two trees
(or two moments of a shared machine) compare by their ratios:

1. SQLite alone (process CPU per row, single thread): the baseline is a plain
   `executemany` into a table of the same columns with no index and no
   computed `time`; then `TraceLog.flush` as the router calls it (the ts
   index, WAL, synchronous=NORMAL, BATCH_MAX rows per transaction) and a few
   variants that say where a row's cost goes.
2. In situ: a gevent loop plays a busy worker (each "request" is two
   socketpair syscalls, ~`--work-us` of Python and a trace row) while
   `TraceLog.run` writes on its threadpool thread, as under gunicorn. The
   figure is the process CPU per request (both threads) minus the same loop's
   with tracing off: what tracing costs the worker, GIL hand-offs and
   threadpool wake-ups included. `lag` is the loop's wall time per request
   at p50/p99 with a pause between requests (a lone client: what the c1 tail
   feels of the writer's bursts).

`herd` comes from the interpreter's environment (run the script with each
tree's venv, cwd in that tree).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable

from herd.router.observe import traces
from herd.router.observe.traces import COLUMNS, Trace, TraceLog


def sample_rows(count: int) -> list[Trace]:
    """Rows like a bench_router run's: the same names, a growing ts."""
    t0 = time.time()
    return [
        Trace(
            t0 + i * 2.5e-4,
            "bench",
            "/api/chat",
            "POST",
            "llama3.2:3b",
            "llama3.2:3b",
            "zero",
            200,
            0.004,
            None,
            1.234 + i % 7,
            26,
            298,
            0,
            None,
            "127.0.0.1",
            None,
        )  # fmt: skip
        for i in range(count)
    ]


# -- 1. SQLite alone ------------------------------------------------------------


def _plain_table(index: bool) -> sqlite3.Connection:
    path = os.path.join(tempfile.mkdtemp(prefix="herd-bench-traces-"), "t.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"CREATE TABLE traces (id INTEGER PRIMARY KEY, {', '.join(COLUMNS)})")
    if index:
        conn.execute("CREATE INDEX traces_ts ON traces (ts)")
    return conn


def plain(rows: list[Trace], *, index: bool, batch: int, many: bool) -> float:
    """us/row of a plain insert: `executemany`, or one INSERT of 64 rows."""
    conn = _plain_table(index)
    width = len(COLUMNS)
    one = f"({', '.join('?' * width)})"
    sql = f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES "
    start = time.process_time()
    for first in range(0, len(rows), batch):
        chunk = rows[first : first + batch]
        conn.execute("BEGIN IMMEDIATE")
        if many:
            conn.executemany(sql + one, chunk)
        else:
            for at in range(0, len(chunk), 64):
                part = chunk[at : at + 64]
                conn.execute(
                    sql + ", ".join([one] * len(part)), [v for r in part for v in r]
                )
        conn.execute("COMMIT")
    spent = time.process_time() - start
    conn.close()
    return spent / len(rows) * 1e6


def tracelog(rows: list[Trace]) -> float:
    """us/row of TraceLog.tick (its flushes, on this thread)."""
    log = TraceLog(tempfile.mkdtemp(prefix="herd-bench-traces-"))
    log.record(rows[0])
    log.tick()  # opens and migrates the database: not counted
    for r in rows:
        log.record(r)
    start = time.process_time()
    log.tick()
    spent = time.process_time() - start
    assert log.written == len(rows) + 1 and not log.pending
    log.close()
    return spent / len(rows) * 1e6


def record_path(rows: list[Trace]) -> float:
    """us/request on the request path: building the row and recording it."""
    from types import SimpleNamespace

    outcome = SimpleNamespace(
        t0=time.time(), client="bench", route="/api/chat", method="POST",
        requested_model="llama3.2:3b", served_model="llama3.2:3b", node="zero",
        status=200, queue_ms=0.004, ttft_ms=None, started=1.0, tokens_in=26,
        tokens_out=298, retries=0, error_class=None, peer="127.0.0.1", tags=None,
    )  # fmt: skip
    log = TraceLog(None)
    record, row = log.record, traces.row
    start = time.process_time()
    for i in range(len(rows)):
        record(row(outcome, 2.0 + i))
    return (time.process_time() - start) / len(rows) * 1e6


# -- 2. In situ: a busy gevent loop and the writer thread -----------------------


def _busy(work_us: float) -> Callable[[], None]:
    """A function that spends about `work_us` of Python time."""
    reps = 100
    start = time.perf_counter()
    for _ in range(reps):
        sum(range(200))
    per = (time.perf_counter() - start) / reps * 1e6
    loops = max(1, round(work_us / per))

    def work() -> None:
        for _ in range(loops):
            sum(range(200))

    return work


def _threads_ns() -> int:
    """Run time (ns) of this process's threads other than the main one."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != os.getpid():
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def in_situ(
    rows: list[Trace], *, trace: bool, work_us: float, gap_s: float
) -> tuple[float, float, float, float, float]:
    """(process CPU us per request, the writer thread's us per request, p50,
    p99, p99.9 wall ms of a request) of a
    gevent loop serving `len(rows)` requests with or without TraceLog.run."""
    import gevent

    log = TraceLog(tempfile.mkdtemp(prefix="herd-bench-traces-"))
    log.record(rows[0])
    log.tick()  # opened on this thread: the writer thread opens its own
    log.close()
    log = TraceLog(log._state_dir)
    stop = False
    writer = gevent.spawn(log.run, lambda: stop) if trace else None
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    work = _busy(work_us)
    record = log.record if trace else (lambda r: None)
    walls = []
    gevent.sleep(0.01)
    threads_before = _threads_ns()
    start = time.process_time()
    for r in rows:
        t = time.perf_counter()
        a.send(b"x" * 200)
        b.recv(4096)
        work()
        b.send(b"y" * 300)
        a.recv(4096)
        record(r)
        walls.append(time.perf_counter() - t)
        gevent.sleep(gap_s)
    # Let the writer finish what was recorded (counted: it is the cost).
    deadline = time.monotonic() + 60
    while trace and log.pending and time.monotonic() < deadline:
        gevent.sleep(0.05)
    spent = time.process_time() - start
    thread_us = (_threads_ns() - threads_before) / 1e3 / len(rows)
    if writer is not None:
        stop = True
        writer.join(timeout=10)
        assert log.written == len(rows), (log.written, log.pending, log.dropped)
    a.close()
    b.close()
    walls.sort()
    at = lambda q: walls[min(len(walls) - 1, int(len(walls) * q))] * 1e3  # noqa: E731
    return spent / len(rows) * 1e6, thread_us, at(0.5), at(0.99), at(0.999)


# -- driver ---------------------------------------------------------------------


def _report(title: str, results: dict[str, list[float]], base: str, unit: str) -> None:
    print(title)
    ref = statistics.median(results[base])
    for name, values in results.items():
        med = statistics.median(values)
        print(
            f"  {name:44s} {med:8.2f} {unit}  [{min(values):.2f}..{max(values):.2f}]"
            f"  x{med / ref:.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work-us", type=float, default=150.0)
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-situ", action="store_true")
    args = parser.parse_args(argv)
    # Every database of the run goes under one directory, removed at the end.
    root = tempfile.mkdtemp(prefix="herd-bench-traces-")
    tempfile.tempdir = root
    try:
        return _run(args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    rows = sample_rows(args.rows)
    print(f"load average {os.getloadavg()[0]:.2f}; rows {args.rows}; "
          f"BATCH_MAX {traces.BATCH_MAX}")  # fmt: skip
    if not args.skip_sqlite:
        cases: dict[str, Callable[[], float]] = {
            "baseline: executemany, no index, 128/txn": lambda: plain(
                rows, index=False, batch=128, many=True
            ),
            "64-row INSERT, no index, 128/txn": lambda: plain(
                rows, index=False, batch=128, many=False
            ),
            "64-row INSERT, ts index, 128/txn": lambda: plain(
                rows, index=True, batch=128, many=False
            ),
            "64-row INSERT, ts index, 1024/txn": lambda: plain(
                rows, index=True, batch=1024, many=False
            ),
            "TraceLog.tick": lambda: tracelog(rows),
            "request path: traces.row + record (us/req)": lambda: record_path(rows),
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, case in cases.items():
                results[name].append(case())
        _report("SQLite, one thread (us/row):", results, next(iter(cases)), "us")
    if not args.skip_situ:
        n = min(args.rows, 8000)
        situ: dict[str, list[float]] = {}
        lag: dict[str, list[tuple[float, ...]]] = {}
        for _ in range(args.repeat):
            for name, trace in (("busy loop, no tracing", False),
                                ("busy loop + TraceLog.run", True)):  # fmt: skip
                cpu, thread, *_ = in_situ(rows[:n], trace=trace,
                                          work_us=args.work_us, gap_s=0.0)  # fmt: skip
                situ.setdefault(name, []).append(cpu)
                if trace:
                    situ.setdefault("  of which the writer thread", []).append(thread)
            for name, trace in (("c1: no tracing", False),
                                ("c1: TraceLog.run", True)):  # fmt: skip
                _, _, *q = in_situ(rows[: n // 2], trace=trace,
                                work_us=args.work_us, gap_s=0.0003)  # fmt: skip
                lag.setdefault(name, []).append(tuple(q))
        _report("In situ, CPU per request (us, both threads):", situ,
                "busy loop, no tracing", "us")  # fmt: skip
        base = statistics.median(situ["busy loop, no tracing"])
        cost = [v - base for v in situ["busy loop + TraceLog.run"]]
        print(f"  tracing costs the worker {statistics.median(cost):.2f} us/req "
              f"[{min(cost):.2f}..{max(cost):.2f}]")  # fmt: skip
        print("Lone client, wall ms per request p50 / p99 / p99.9 (p99 - p50):")
        for name, values in lag.items():
            p50, p99, p999 = (statistics.median(v[i] for v in values) for i in range(3))
            spread = [v[1] - v[0] for v in values]
            print(f"  {name:44s} {p50:.3f} / {p99:.3f} / {p999:.3f}"
                  f"  ({statistics.median(spread):.3f}"
                  f" [{min(spread):.3f}..{max(spread):.3f}])")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
