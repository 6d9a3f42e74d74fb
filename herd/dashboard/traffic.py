"""Traffic over the last hour and day, aggregated from traces.db.

What the dashboard charts: model requests per minute, errors, and p50/p95
time to first token and duration in time buckets (one minute over the hour,
fifteen minutes over the day), plus usage per client group, tag and model.
"Model requests" are the traces that name a model (chat, generate, embed,
OpenAI completions...); probes, /fleet/status and the dashboard's own polling
are not counted. The file is opened read-only and rows are read newest
first up to `ROWS_MAX`, so a huge day is summarized from its newest part
(`truncated` says so) instead of taking unbounded memory.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from herd.ops.tracequery import NONE_KEY, UNTAGGED, Bucket, has_tags
from herd.router.observe.tags import split
from herd.router.observe.traces import DB_NAME

#: name -> (seconds covered, seconds per bucket)
WINDOWS = {"hour": (3600, 60), "day": (86400, 900)}
ROWS_MAX = 200_000
#: Keys listed per dimension (the busiest first).
KEYS_MAX = 20

_MODEL_ROWS = "(requested_model IS NOT NULL OR served_model IS NOT NULL)"


class _Window:
    def __init__(self, now: float, span: int, step: int):
        self.since = now - span
        self.step = step
        self.count = span // step
        #: Bucket i covers [start + i*step, start + (i+1)*step); the last one ends now.
        self.start = now - self.count * step
        self.buckets = [Bucket() for _ in range(self.count)]
        self.total = Bucket()
        self.by: dict[str, dict[str, Bucket]] = {"group": {}, "tag": {}, "model": {}}

    def add(self, row: sqlite3.Row, tags: list[str]) -> None:
        ts = row["ts"]
        if ts < self.since:
            return
        index = min(self.count - 1, int((ts - self.start) // self.step))
        self.buckets[index].add(row)
        self.total.add(row)
        keys = {
            "group": [row["client"] or NONE_KEY],
            "tag": tags or [UNTAGGED],
            "model": [row["served_model"] or row["requested_model"] or NONE_KEY],
        }
        for dimension, names in keys.items():
            for name in names:
                self.by[dimension].setdefault(name, Bucket()).add(row)

    def summary(self) -> dict[str, Any]:
        per_minute = 60.0 / self.step
        series: dict[str, list[Any]] = {
            "t": [round(self.start + i * self.step, 3) for i in range(self.count)],
            "requests": [],
            "errors": [],
            "rpm": [],
            "ttft_p50_ms": [],
            "ttft_p95_ms": [],
            "duration_p50_ms": [],
            "duration_p95_ms": [],
        }
        for bucket in self.buckets:
            figures = bucket.summary()
            series["requests"].append(figures["count"])
            series["errors"].append(figures["errors"])
            series["rpm"].append(round(figures["count"] * per_minute, 3))
            for key in ("ttft_p50_ms", "ttft_p95_ms"):
                series[key].append(figures[key])
            for key in ("duration_p50_ms", "duration_p95_ms"):
                series[key].append(figures[key])
        return {
            "since": round(self.since, 3),
            "bucket_s": self.step,
            "series": series,
            "total": self.total.summary(),
            **{
                f"by_{dimension}": [
                    {"key": key, **bucket.summary()}
                    for key, bucket in sorted(
                        buckets.items(), key=lambda kv: (-kv[1].count, kv[0])
                    )[:KEYS_MAX]
                ]
                for dimension, buckets in self.by.items()
            },
        }


def empty(now: float, reason: str) -> dict[str, Any]:
    """The answer when there is nothing to read (no traces.db yet)."""
    return {"generated_at": now, "available": False, "reason": reason}


def traffic(state_dir: str | Path, now: float) -> dict[str, Any]:
    """Series and usage for every window in WINDOWS (see the module docstring)."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        return empty(now, f"no traces yet ({path} does not exist)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as ex:
        return empty(now, f"cannot read {path}: {ex}")
    try:
        conn.row_factory = sqlite3.Row
        return _aggregate(conn, now)
    except sqlite3.Error as ex:
        return empty(now, f"cannot read {path}: {ex}")
    finally:
        conn.close()


def _aggregate(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    windows = {name: _Window(now, *spec) for name, spec in WINDOWS.items()}
    since = min(w.since for w in windows.values())
    tagged = has_tags(conn)
    columns = (
        "ts, client, requested_model, served_model, status, error_class, "
        "tokens_in, tokens_out, ttft_ms, duration_ms" + (", tags" if tagged else "")
    )
    read = 0
    oldest = None
    for row in conn.execute(
        f"SELECT {columns} FROM traces WHERE ts >= ? AND ts <= ? AND {_MODEL_ROWS}"
        " ORDER BY ts DESC LIMIT ?",
        (since, now, ROWS_MAX),
    ):
        read += 1
        oldest = row["ts"]
        tags = split(row["tags"]) if tagged else []
        for window in windows.values():
            window.add(row, tags)
    return {
        "generated_at": now,
        "available": True,
        "counted": "model requests (traces naming a model)",
        "truncated": read >= ROWS_MAX,
        "oldest_counted": oldest,
        "windows": {name: w.summary() for name, w in windows.items()},
    }
