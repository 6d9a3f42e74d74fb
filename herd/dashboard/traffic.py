"""Traffic over the last hour and day, read from traces.db's rollup.

What the dashboard charts: model requests per minute, errors, and p50/p95
time to first token and duration in time buckets (one minute over the hour,
fifteen minutes over the day, on whole minutes: the newest bucket is the one
under way), plus usage per client group, tag and model. "Model requests" are
the traces that name a model (chat, generate, embed, OpenAI completions...);
probes, /fleet/status and the dashboard's own polling are not counted.

Everything comes from the rollup kept in traces.db next to the rows
(herd.router.observe.rollup): each refresh first rolls up the traces written
since the last one (each trace is rolled up once, in SQLite, with the GIL
released), then reads the window, at a cost that does not grow with the
traffic: SQLite sums the window's minutes per (bucket, group, model, tags)
and its latency histograms per bucket and per key, and Python folds what
comes back (a few thousand rows at most). Counts, errors and tokens are
exact. Percentiles are nearest-rank within rollup.RELATIVE_ERROR (4.4%): the
chart's and the totals' over the window's own minutes; those per group, model
and tag over the window's quarter hours (the hour's span from the start of
its first quarter, up to 14 minutes more; the day's is whole quarters). The
file is opened read-write only to roll up (it is never created here), and
every value is read as the writer writes it: a damaged rollup row counts as
nothing rather than answering 500.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.ops.tracequery import UNTAGGED, Bucket
from herd.router.observe import rollup
from herd.router.observe.tags import split
from herd.router.observe.traces import DB_NAME
from herd.sqlread import as_text

log = logging.getLogger("herd.router")

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

# Keys are read as text and figures only when they are numbers: a value of
# another type (a damaged or hand-edited traces.db) would otherwise reach the
# JSON encoder as bytes, or a sort of mixed types, and answer 500.
_KEYS = {c: as_text(c, "''") for c in DIMENSIONS.values()}
#: A rollup figure above this is damage, not traffic (a minute would hold a
#: trillion requests or tokens): it is read as nothing, so sums over a day of
#: minutes never overflow SQLite's integers (an error, no answer at all).
FIGURE_MAX = 10**12


def _figure(column: str) -> str:
    return (
        f"CASE WHEN typeof({column}) = 'integer'"
        f" AND {column} BETWEEN 0 AND {FIGURE_MAX} THEN {column} ELSE 0 END"
    )


def _within(column: str, since: str) -> str:
    return f"typeof({column}) = 'integer' AND {column} >= {since} AND {column} <= :now"


def _bucket(column: str) -> str:
    return f"min(:last, ({column} - :start) / :step)"


_HISTOGRAM = (
    f"metric IN ({rollup.TTFT}, {rollup.DURATION}) AND typeof(bin) = 'integer'"
    f" AND bin BETWEEN 0 AND {rollup.TOP_BIN}"
)
_N = f"sum({_figure('n')})"
# Grouped by the stored columns (the cheapest to compare), read as text.
_KEY_TEXT = ", ".join(_KEYS.values())
_KEY_COLUMNS = ", ".join(DIMENSIONS.values())


def _per_bucket(grain: int, column: str) -> str:
    """What to group a window's rows by for its buckets: over the hour the
    stored minute itself (a bucket is a minute, and rows come in that order:
    SQLite sums them without sorting), else the bucket."""
    return column if grain == rollup.MINUTE_S else "1"


#: The counts per bucket and key, by the window's bucket size.
_COUNTS = {
    grain: f"SELECT {_bucket('minute')}, {_KEY_TEXT}, "
    + ", ".join(
        f"sum({_figure(c)})" for c in ("requests", "errors", "tokens_in", "tokens_out")
    )
    + f" FROM traffic_minutes WHERE {_within('minute', ':start')}"
    f" GROUP BY {_per_bucket(grain, 'minute')}, {_KEY_COLUMNS}"
    for grain in (rollup.MINUTE_S, rollup.QUARTER_S)
}
#: The chart's histograms, by the window's bucket size: per minute for all
#: keys, or per quarter hour summed over the keys.
_SERIES = {
    grain: f"SELECT {_bucket(column)}, metric, bin, {_N} FROM {table}"
    f" WHERE {_within(column, ':start')} AND {_HISTOGRAM}"
    f" GROUP BY {_per_bucket(grain, column)}, metric, bin"
    for grain, table, column in (
        (rollup.MINUTE_S, "traffic_latency_minutes", "minute"),
        (rollup.QUARTER_S, "traffic_latency", "slot"),
    )
}
_PER_KEY = (
    f"SELECT {_KEY_TEXT}, metric, bin, {_N} FROM traffic_latency"
    f" WHERE {_within('slot', ':quarter')} AND {_HISTOGRAM}"
    f" GROUP BY {_KEY_COLUMNS}, metric, bin"
)


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
        self._keyed: dict[tuple, list[Rolled]] = {}

    def keyed(self, key: tuple[str, str, str], new: bool = True) -> list[Rolled]:
        """The Rolled figures of the group, model and tags of a (client, model,
        tags) key. Worked out once per key. With `new` False, only those the
        counts made (a quarter's histograms may name a key with no request in
        the window)."""
        found = self._keyed.get(key)
        if found is None:
            if not new:
                return []
            client, model, tags = key
            by = self.by
            found = [_get(by["group"], client), _get(by["model"], model)]
            found.extend(_get(by["tag"], tag) for tag in split(tags) or [UNTAGGED])
            self._keyed[key] = found
        return found


def _get(by: dict[str, Rolled], key: str) -> Rolled:
    found = by.get(key)
    if found is None:
        found = by[key] = Rolled()
    return found


def _ranked(by: dict[str, Rolled]) -> list[dict[str, Any]]:
    ordered = sorted(by.items(), key=lambda kv: (-kv[1].count, kv[0]))
    return [{"key": k, **figures.summary()} for k, figures in ordered[:KEYS_MAX]]


def window(conn: sqlite3.Connection, now: float, span: int, step: int) -> dict:
    """One window: its bucket series, totals, and usage per group, tag, model."""
    count = span // step
    start = int(now // step) * step - (count - 1) * step  # bucket i: start + i*step
    params = {"start": start, "now": now, "step": step, "last": count - 1}
    params["quarter"] = start // rollup.QUARTER_S * rollup.QUARTER_S
    figures = _Window(count)
    buckets, total = figures.buckets, figures.total
    for bucket, *key, n, errors, tokens_in, tokens_out in conn.execute(
        _COUNTS[step], params
    ):
        for target in (buckets[bucket], total, *figures.keyed(tuple(key))):
            target.count += n
            target.errors += errors
            target.tokens_in += tokens_in
            target.tokens_out += tokens_out
    # The histograms: a few thousand rows, so no method call per row.
    ttft = rollup.TTFT
    totals = (total.ttft, total.duration)
    for bucket, metric, bin_, n in conn.execute(_SERIES[step], params):
        one = buckets[bucket]
        histograms = (
            (one.ttft, totals[0]) if metric == ttft else (one.duration, totals[1])
        )
        for histogram in histograms:
            histogram[bin_] = histogram.get(bin_, 0) + n
    for *key, metric, bin_, n in conn.execute(_PER_KEY, params):
        for target in figures.keyed(tuple(key), new=False):
            histogram = target.ttft if metric == ttft else target.duration
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


def roll_up(conn: sqlite3.Connection, now: float) -> None:
    """Roll up the traces written since the last roll-up (see
    herd.router.observe.rollup). If that cannot be done now (another writer
    holds the lock past the timeout, a read-only file, a damaged table), the
    rollup is read as it stands: behind, never wrong."""
    try:
        rollup.with_ln(conn)
        rolled = rollup.ROLL_MAX
        while rolled == rollup.ROLL_MAX:  # a transaction each, see ROLL_MAX
            conn.execute("BEGIN IMMEDIATE")
            try:
                rolled = rollup.roll(conn.execute, now, rollup.ROLL_MAX)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
    except sqlite3.Error as ex:
        log.warning("rolling up traces for the dashboard failed: %s", ex)


def traffic(
    state_dir: str | Path, now: float, names: tuple[str, ...] = tuple(WINDOWS)
) -> dict[str, Any]:
    """The windows `names` of WINDOWS (see the module docstring)."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        return empty(now, f"no traces yet ({path} does not exist)")
    try:
        # Read-write (never created here) only to roll up; autocommit, so a
        # read takes no lock the trace writer would wait for.
        conn = sqlite3.connect(
            f"file:{path}?mode=rw", uri=True, timeout=5, isolation_level=None
        )
    except sqlite3.Error as ex:
        return empty(now, f"cannot read {path}: {ex}")
    try:
        roll_up(conn, now)
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
