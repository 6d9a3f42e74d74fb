"""Traffic over the last hour and day, read from traces.db's rollup.

What the dashboard charts: model requests per minute, errors, and p50/p95
time to first token and duration in time buckets (one minute over the hour,
fifteen minutes over the day, on whole minutes: the newest bucket is the one
under way), plus usage per client group, tag and model. "Model requests" are
the traces that name a model (chat, generate, embed, OpenAI completions...);
probes, /fleet/status and the dashboard's own polling are not counted.

Everything comes from the per-minute rollup the trace writer keeps next to
the rows (herd.router.observe.rollup), so a window costs the same whatever the
traffic: SQLite sums the window's minutes per (bucket, group, model, tags)
and its latency histograms per bucket and per key of each dimension, and
Python folds a few hundred rows. Counts, errors and tokens are exact;
percentiles are nearest-rank within rollup.RELATIVE_ERROR (4.4%). The file is
opened read-only, and every value is read as the writer writes it: a damaged
rollup row counts as nothing rather than answering 500.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.ops.tracequery import UNTAGGED, Bucket, as_text
from herd.router.observe import rollup
from herd.router.observe.tags import split
from herd.router.observe.traces import DB_NAME

#: name -> (seconds covered, seconds per bucket: whole minutes)
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
#: The dimensions besides time, and the rollup column each groups by.
DIMENSIONS = {"group": "client", "model": "model", "tag": "tags"}

_WHERE = "typeof(minute) = 'integer' AND minute >= :start AND minute <= :now"
# Keys are read as text and figures only when they are numbers: a value of
# another type (a damaged or hand-edited traces.db) would otherwise reach the
# JSON encoder as bytes, or a sort of mixed types, and answer 500.
_KEYS = {c: as_text(c, "''") for c in DIMENSIONS.values()}
_BUCKET = "min(:last, (minute - :start) / :step)"


@dataclass
class Rolled(Bucket):
    """A Bucket whose TTFTs and durations are histograms ({bin: count})."""

    ttft: dict[int, int] = field(default_factory=dict)  # type: ignore[assignment]
    duration: dict[int, int] = field(default_factory=dict)  # type: ignore[assignment]

    @staticmethod
    def percentile(values: Any, pct: float) -> float | None:
        return rollup.percentile(values, pct)


class _Window:
    def __init__(self, count: int):
        self.buckets = [Rolled() for _ in range(count)]
        self.total = Rolled()
        self.by: dict[str, dict[str, Rolled]] = {d: {} for d in DIMENSIONS}

    def keyed(self, dimension: str, key: Any) -> list[Rolled]:
        """The Rolled figures a rollup row keyed `key` in `dimension` adds to."""
        if dimension == "bucket":
            return [self.buckets[key]]
        if dimension == "total":
            return [self.total]
        by = self.by[dimension]
        keys = (split(key) or [UNTAGGED]) if dimension == "tag" else [key]
        return [_get(by, k) for k in keys]


def _get(by: dict[str, Rolled], key: str) -> Rolled:
    found = by.get(key)
    if found is None:
        found = by[key] = Rolled()
    return found


def _ranked(by: dict[str, Rolled]) -> list[dict[str, Any]]:
    ordered = sorted(by.items(), key=lambda kv: (-kv[1].count, kv[0]))
    return [{"key": k, **figures.summary()} for k, figures in ordered[:KEYS_MAX]]


def _grouped(columns: str) -> str:
    """One SELECT per dimension, as (dimension, key, ...`columns` summed)."""
    return " UNION ALL ".join(
        f"SELECT '{name}', {key}, {columns} FROM {{table}} WHERE {{where}}"
        f" GROUP BY 2{{more}}"
        for name, key in (
            ("bucket", _BUCKET),
            ("total", "0"),
            *((d, _KEYS[c]) for d, c in DIMENSIONS.items()),
        )
    )


#: A rollup figure above this is damage, not traffic (a minute would hold a
#: trillion requests or tokens): it is read as nothing, so sums over a day of
#: minutes never overflow SQLite's integers (an error, no answer at all).
FIGURE_MAX = 10**12


def _figure(column: str) -> str:
    return (
        f"CASE WHEN typeof({column}) = 'integer'"
        f" AND {column} BETWEEN 0 AND {FIGURE_MAX} THEN {column} ELSE 0 END"
    )


_COUNTS = _grouped(
    ", ".join(
        f"sum({_figure(c)})" for c in ("requests", "errors", "tokens_in", "tokens_out")
    )
).format(table="traffic_minutes", where=_WHERE, more="")
_LATENCY = _grouped(f"metric, bin, sum({_figure('n')})").format(
    table="traffic_latency",
    where=(
        f"{_WHERE} AND metric IN ({rollup.TTFT}, {rollup.DURATION})"
        f" AND typeof(bin) = 'integer' AND bin BETWEEN 0 AND {rollup.TOP_BIN}"
    ),
    more=", 3, 4",
)


def window(conn: sqlite3.Connection, now: float, span: int, step: int) -> dict:
    """One window: its bucket series, totals, and usage per group, tag, model."""
    count = span // step
    start = int(now // step) * step - (count - 1) * step  # bucket i: start + i*step
    params = {"start": start, "now": now, "step": step, "last": count - 1}
    figures = _Window(count)
    for dimension, key, n, errors, tokens_in, tokens_out in conn.execute(
        _COUNTS, params
    ):
        for target in figures.keyed(dimension, key):
            target.count += n
            target.errors += errors
            target.tokens_in += tokens_in
            target.tokens_out += tokens_out
    for dimension, key, metric, bin_, n in conn.execute(_LATENCY, params):
        for target in figures.keyed(dimension, key):
            histogram = target.ttft if metric == rollup.TTFT else target.duration
            histogram[bin_] = histogram.get(bin_, 0) + n
    series: dict[str, list[Any]] = {"t": [start + i * step for i in range(count)]}
    summaries = [b.summary() for b in figures.buckets]
    series["requests"] = [s["count"] for s in summaries]
    for name in SERIES:
        series[name] = [s[name] for s in summaries]
    series["rpm"] = [round(c * 60.0 / step, 3) for c in series["requests"]]
    return {
        "since": start,
        "bucket_s": step,
        "sampled_every": 1,
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
