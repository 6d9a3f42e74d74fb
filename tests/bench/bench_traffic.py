"""The dashboard's traffic view: CPU per refresh, and the trace writer per row.

    python tests/bench/bench_traffic.py build DIR [--hour 100000] [--day 0]
    python tests/bench/bench_traffic.py refresh DIR [--repeat 7] [--new-rows 140]
    python tests/bench/bench_traffic.py write [--rows 20000] [--repeat 5]

`build` writes a traces.db in DIR with the router's own TraceLog: `--hour`
model requests in the hour before NOW (and `--day` more over the rest of the
day), of 3 client groups, 4 models, 4 tag sets, a few errors, log-normal
latencies. `refresh` reads it as the dashboard does (herd.dashboard.traffic,
each window alone, as its caches do) and prints the process CPU per refresh,
median and min..max of `--repeat`, with the hour's answer's request count as
a check; `--new-rows` traces are written before each refresh (untimed), as
between two refreshes, and the first refresh, which rolls up every trace not
rolled up yet (the whole hour after `build`), is printed apart. `write`
prints TraceLog.tick's process CPU per row for such rows, median and min..max,
and the same against a plain `executemany` of the rows
into a table of the same columns in the same run (the ratio compares trees).

`herd` comes from the interpreter's path: to compare two trees, build once
and run `refresh` and `write` alternately with each tree first on PYTHONPATH.
Under `valgrind --tool=callgrind`, `write --repeat 1 --rows N` against
`--rows 0` gives instructions per row (the setup is the same in both).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time

from herd.router.observe.traces import COLUMNS, Trace, TraceLog

#: A fixed "now" (20 s into a minute), so every run reads the same windows.
NOW = 1_800_000_020.0


def rows(count: int, span: float, seed: int = 7, end: float = NOW) -> list[Trace]:
    """`count` model requests spread over the `span` seconds before `end`."""
    pick = random.Random(seed)
    found = []
    for i in range(count):
        status = 200 if pick.random() < 0.97 else pick.choice((404, 500, 503))
        model = pick.choice(("llama3.2:3b", "qwen3:0.6b", "mistral:7b", "phi4"))
        found.append(
            Trace(
                end - span + span * i / max(1, count),
                pick.choice(("ops", "apps", "batch")),
                "/api/chat",
                "POST",
                model,
                model if status < 400 else None,
                pick.choice(("node-a", "node-b", "node-c")),
                status,
                0.004,
                round(pick.lognormvariate(5, 1), 3) if status < 400 else None,
                round(pick.lognormvariate(7, 1.2), 3),
                pick.randint(10, 900),
                pick.randint(10, 900),
                0,
                None if status < 400 else "node_error",
                "127.0.0.1",
                pick.choice((None, None, "app:wiki", "app:wiki,team/ops")),
            )
        )
    return found


def build(state_dir: str, hour: int, day: int) -> None:
    log = TraceLog(state_dir, clock=lambda: NOW)
    for row in rows(day, 86400 - 3600, seed=8, end=NOW - 3600) + rows(hour, 3600):
        log.record(row)
    while log.pending:
        log.tick()
    log.close()
    print(f"built {state_dir}: {hour} traces in the hour, {day} more in the day")


def refresh(state_dir: str, repeat: int, new_rows: int, names: tuple[str, ...]) -> None:
    """CPU per refresh of each window; before each, `new_rows` more traces are
    written (untimed: the trace writer's), as between two refreshes."""
    from herd.dashboard.traffic import traffic

    print(f"load average {os.getloadavg()[0]:.2f}; {new_rows} new traces each")
    start = time.process_time()
    traffic(state_dir, NOW, ("hour",))
    print(f"  first: {(time.process_time() - start) * 1000:8.2f} ms CPU")
    log = TraceLog(state_dir, clock=lambda: NOW)
    fresh = rows(new_rows * repeat * 2, 5.0 * repeat * 2, seed=9, end=NOW)
    for name in names:
        spent = []
        for _ in range(repeat):
            for _ in range(new_rows):
                log.record(fresh.pop())
            log.tick()  # a tree without the rollup cannot write to this file
            start = time.process_time()
            body = traffic(state_dir, NOW, (name,))
            spent.append((time.process_time() - start) * 1000)
        assert body["available"], body
        count = body["windows"][name]["total"]["count"]
        print(
            f"  {name}: {statistics.median(spent):8.2f} ms CPU per refresh "
            f"({min(spent):.2f}..{max(spent):.2f}), {count} requests"
        )
    log.close()


def _plain(batch: list[Trace]) -> float:
    """us/row of a plain executemany into the same columns (no index)."""
    path = os.path.join(tempfile.mkdtemp(prefix="herd-bench-traffic-"), "t.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"CREATE TABLE traces (id INTEGER PRIMARY KEY, {', '.join(COLUMNS)})")
    sql = f"INSERT INTO traces VALUES (NULL, {', '.join('?' * len(COLUMNS))})"
    start = time.process_time()
    for at in range(0, len(batch), 1024):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, batch[at : at + 1024])
        conn.execute("COMMIT")
    spent = time.process_time() - start
    conn.close()
    return spent / max(1, len(batch)) * 1e6


def _tracelog(batch: list[Trace]) -> float:
    """us/row of TraceLog.tick (the database opened and migrated before)."""
    log = TraceLog(tempfile.mkdtemp(prefix="herd-bench-traffic-"))
    log.record(rows(1, 1.0, end=NOW - 7200)[0])
    log.tick()
    for row in batch:
        log.record(row)
    start = time.process_time()
    while log.pending:
        log.tick()
    spent = time.process_time() - start
    log.close()
    return spent / max(1, len(batch)) * 1e6


def write(count: int, repeat: int) -> None:
    # The rows a busy minute or so brings: timestamps 2.5 ms apart.
    batch = rows(count, count * 2.5e-3)
    print(f"load average {os.getloadavg()[0]:.2f}; rows {count}")
    plain, traced = [], []
    for _ in range(repeat):
        plain.append(_plain(batch))
        traced.append(_tracelog(batch))
    for name, spent in (("plain executemany", plain), ("TraceLog.tick", traced)):
        print(
            f"  {name:18s} {statistics.median(spent):6.2f} us/row "
            f"({min(spent):.2f}..{max(spent):.2f})"
        )
    if count:
        ratios = [t / p for t, p in zip(traced, plain, strict=True)]
        print(
            f"  TraceLog / plain   {statistics.median(ratios):6.2f}x "
            f"({min(ratios):.2f}..{max(ratios):.2f})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("build")
    one.add_argument("dir")
    one.add_argument("--hour", type=int, default=100_000)
    one.add_argument("--day", type=int, default=0)
    one = sub.add_parser("refresh")
    one.add_argument("dir")
    one.add_argument("--repeat", type=int, default=7)
    # 5 s (a refresh) of 100,000 traces an hour.
    one.add_argument("--new-rows", type=int, default=140)
    one.add_argument("--window", choices=("hour", "day"), action="append")
    one = sub.add_parser("write")
    one.add_argument("--rows", type=int, default=20_000)
    one.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.dir, args.hour, args.day)
    elif args.command == "refresh":
        refresh(args.dir, args.repeat, args.new_rows, args.window or ("hour", "day"))
    else:
        write(args.rows, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
