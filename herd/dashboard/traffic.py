"""Traffic over the last hour and day, aggregated from traces.db.

What the dashboard charts: model requests per minute, errors, and p50/p95
time to first token and duration in time buckets (one minute over the hour,
fifteen minutes over the day), plus usage per client group, tag and model.
"Model requests" are the traces that name a model (chat, generate, embed,
OpenAI completions...); probes, /fleet/status and the dashboard's own polling
are not counted.

A window costs two queries whatever its size. Counts, errors and tokens are
exact: SQLite groups the window by (bucket, group, model, tags), which leaves
a few hundred rows for Python to fold into each dimension. Percentiles
(nearest rank) come from at most `SAMPLE_MAX` traces: every trace when the
window holds fewer, else every n-th by id (`sampled_every` says which), so a
busy day never turns into a Python loop over millions of rows. The file is
opened read-only.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

from herd.ops.tracequery import (
    NONE_KEY,
    UNTAGGED,
    Bucket,
    as_number,
    as_text,
    has_tags,
)
from herd.router.observe.tags import split
from herd.router.observe.traces import DB_NAME

#: name -> (seconds covered, seconds per bucket)
WINDOWS = {"hour": (3600, 60), "day": (86400, 900)}
#: Keys listed per dimension (the busiest first).
KEYS_MAX = 20
#: Per-bucket figures charted besides the request count.
SERIES = (
    "errors",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "duration_p50_ms",
    "duration_p95_ms",
)
#: Traces read for the percentiles of one window, at most.
SAMPLE_MAX = 50_000

_WHERE = (
    "ts >= :since AND ts <= :now"
    " AND (requested_model IS NOT NULL OR served_model IS NOT NULL)"
)
# Keys are read as text and figures only when they are numbers: a value of
# another type (a damaged or hand-edited traces.db) would otherwise reach the
# JSON encoder as bytes, or a sort of mixed types, and answer 500.
_MODEL = as_text("coalesce(served_model, requested_model)", f"'{NONE_KEY}'")
_CLIENT = as_text("client", f"'{NONE_KEY}'")
_TTFT = as_number("ttft_ms")
_DURATION = as_number("duration_ms")


class _Window:
    def __init__(self, count: int):
        self.buckets = [Bucket() for _ in range(count)]
        self.total = Bucket()
        self.by: dict[str, dict[str, Bucket]] = {"group": {}, "tag": {}, "model": {}}
        #: (bucket, group, model, tags) -> every Bucket such a trace counts in.
        self._targets: dict[tuple, list[Bucket]] = {}

    def targets(self, key: tuple) -> list[Bucket]:
        """Every Bucket a trace of this (time bucket, group, model, tags) counts in.

        Worked out once per key: a window holds a few hundred keys and up to
        SAMPLE_MAX sampled traces, and this runs on a thread that shares the
        worker's GIL with its event loop."""
        found = self._targets.get(key)
        if found is None:
            bucket, client, model, tags = key
            by = self.by
            found = [self.buckets[bucket], self.total]
            found.append(_get(by["group"], client))
            found.append(_get(by["model"], model))
            found.extend(_get(by["tag"], tag) for tag in split(tags) or [UNTAGGED])
            self._targets[key] = found
        return found


def _get(by: dict[str, Bucket], key: str) -> Bucket:
    found = by.get(key)
    if found is None:
        found = by[key] = Bucket()
    return found


def _ranked(by: dict[str, Bucket]) -> list[dict[str, Any]]:
    ordered = sorted(by.items(), key=lambda kv: (-kv[1].count, kv[0]))
    return [{"key": k, **figures.summary()} for k, figures in ordered[:KEYS_MAX]]


def window(conn: sqlite3.Connection, now: float, span: int, step: int) -> dict:
    """One window: its bucket series, totals, and usage per group, tag, model."""
    count = span // step
    start = now - count * step  # bucket i: [start + i*step, start + (i+1)*step)
    params: dict[str, Any] = {"since": now - span, "now": now, "start": start}
    keys = (
        f"min({count - 1}, CAST((ts - :start) / {step} AS INTEGER)), {_CLIENT},"
        f" {_MODEL}, {as_text('tags') if has_tags(conn) else 'NULL'}"
    )
    figures = _Window(count)
    for *key, n, errors, tokens_in, tokens_out in conn.execute(
        f"SELECT {keys}, count(*), sum(status >= 400 OR error_class IS NOT NULL),"
        " coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0)"
        f" FROM traces WHERE {_WHERE} GROUP BY 1, 2, 3, 4",
        params,
    ):
        for target in figures.targets(tuple(key)):
            target.count += n
            target.errors += errors
            target.tokens_in += tokens_in
            target.tokens_out += tokens_out
    every = max(1, math.ceil(figures.total.count / SAMPLE_MAX))
    # The samples are gathered per key first, then handed to each key's
    # Buckets a list at a time: one append per trace, not one per Bucket.
    sampled: dict[tuple, tuple[list[float], list[float]]] = {}
    for bucket, client, model, tags, ttft, duration in conn.execute(
        f"SELECT {keys}, {_TTFT}, {_DURATION} FROM traces WHERE {_WHERE}"
        " AND (ttft_ms IS NOT NULL OR duration_ms IS NOT NULL) AND id % :every = 0",
        {**params, "every": every},
    ):
        key = (bucket, client, model, tags)
        lists = sampled.get(key)
        if lists is None:
            lists = sampled[key] = ([], [])
        if ttft is not None:
            lists[0].append(ttft)
        if duration is not None:
            lists[1].append(duration)
    for key, (ttfts, durations) in sampled.items():
        for target in figures.targets(key):
            target.ttft.extend(ttfts)
            target.duration.extend(durations)
    series: dict[str, list[Any]] = {
        "t": [round(start + i * step, 3) for i in range(count)]
    }
    summaries = [b.summary() for b in figures.buckets]
    series["requests"] = [s["count"] for s in summaries]
    for name in SERIES:
        series[name] = [s[name] for s in summaries]
    series["rpm"] = [round(c * 60.0 / step, 3) for c in series["requests"]]
    return {
        "since": round(now - span, 3),
        "bucket_s": step,
        "sampled_every": every,
        "series": series,
        "total": figures.total.summary(),
        **{f"by_{d}": _ranked(by) for d, by in figures.by.items()},
    }


def empty(now: float, reason: str) -> dict[str, Any]:
    """The answer when there is nothing to read (no traces.db yet)."""
    return {"generated_at": now, "available": False, "reason": reason}


def traffic(
    state_dir: str | Path, now: float, names: tuple[str, ...] = tuple(WINDOWS)
) -> dict[str, Any]:
    """The windows `names` of WINDOWS (see the module docstring)."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        return empty(now, f"no traces yet ({path} does not exist)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as ex:
        return empty(now, f"cannot read {path}: {ex}")
    try:
        return {
            "generated_at": now,
            "available": True,
            "counted": "model requests (traces naming a model)",
            "windows": {n: window(conn, now, *WINDOWS[n]) for n in names},
        }
    except (sqlite3.Error, TypeError, ValueError, OverflowError) as ex:
        # The errors of a damaged file the queries above do not already
        # sidestep: the dashboard says so instead of answering 500.
        return empty(now, f"cannot read {path}: {ex}")
    finally:
        conn.close()
