"""Per-minute totals of traces.db, kept by the trace writer: the traffic rollup.

The dashboard's traffic view charts an hour and a day of model requests. Read
from the trace rows, each refresh cost CPU in proportion to the traffic (0.45 s
for 100,000 traces in the hour); read from these tables it costs in proportion
to the minutes shown and the keys seen in them, whatever the traffic.

Two tables, one row per (minute, client group, model, tags):

- `traffic_minutes`: requests, errors, tokens in and out;
- `traffic_latency`: per `metric` (TTFT, duration) a histogram, one row per
  bin holding values: `n` of the minute's values fell in bin `bin`.

Only model requests are counted (traces naming a model): the rows the traffic
view counts. A NULL client is stored as NONE_KEY and NULL tags as '' (a
primary key holds no NULL); the model is the served one, else the requested.

`roll` adds the rows of the transaction under way (the rows whose id is above
the largest id before it): one statement per table, all SQLite's work (the
GIL is released), a range scan of rows that are still in the page cache. The
writer runs it in the same transaction as the rows, so the rollup never
counts a row that is not in traces.db, nor misses one; pruning deletes whole
minutes of both (`prune`).

Histogram bins (milliseconds), 8 per doubling from 0.1 ms:
bin 0 holds values below 0.1 ms (and negative ones); bin b in 1..200 holds
[0.1 * 2**((b-1)/8), 0.1 * 2**(b/8)); bin 201 holds 2**25 * 0.1 ms (about 56
minutes) and up. A percentile is read as the nearest-rank value's bin and
reported as that bin's geometric middle, so for any value from 0.1 ms to 56
minutes it is within 2**(1/16) - 1 = 4.4% of the exact nearest-rank value;
below 0.1 ms within 0.05 ms; beyond 56 minutes it reads as 56 minutes.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from typing import Any

from herd.sqlread import as_number, as_text

#: What a NULL client group is stored and shown as.
NONE_KEY = "(none)"
#: The histogram's metrics (the `metric` column).
TTFT, DURATION = 0, 1
#: Bins per doubling, the lowest bound (ms) and the count of bounded bins.
PER_DOUBLING = 8
LOWEST_MS = 0.1
BOUNDED = 200
TOP_BIN = BOUNDED + 1
TOP_MS = LOWEST_MS * 2 ** (BOUNDED / PER_DOUBLING)
#: The largest relative error of a percentile between LOWEST_MS and TOP_MS.
RELATIVE_ERROR = 2 ** (1 / (2 * PER_DOUBLING)) - 1
#: Rows are pruned a whole minute at a time (see herd.router.observe.traces).
MINUTE_S = 60


def _bin(column: str) -> str:
    """SQL for the histogram bin of `column` (a number; see the docstring)."""
    scale = PER_DOUBLING / math.log(2)
    return (
        f"CASE WHEN {column} < {LOWEST_MS!r} THEN 0"
        f" WHEN {column} >= {TOP_MS!r} THEN {TOP_BIN}"
        f" ELSE min({BOUNDED}, 1 + CAST(ln({column} / {LOWEST_MS!r}) * {scale!r}"
        " AS INTEGER)) END"
    )


def middle(bin_: int) -> float:
    """The value a percentile falling in `bin_` is reported as."""
    if bin_ <= 0:
        return LOWEST_MS / 2
    if bin_ >= TOP_BIN:
        return TOP_MS
    return LOWEST_MS * 2 ** ((bin_ - 0.5) / PER_DOUBLING)


#: The key of a trace's rollup rows: minute, client group, model, tags.
_KEYS = (
    f"CAST(ts AS INTEGER) / {MINUTE_S} * {MINUTE_S}",
    as_text("client", repr(NONE_KEY)),
    as_text("coalesce(served_model, requested_model)", repr(NONE_KEY)),
    as_text("tags", "''"),
)
_KEY_COLUMNS = ("minute", "client", "model", "tags")
_KEY_LIST = ", ".join(_KEY_COLUMNS)
_ROWS = (
    f"id > :after AND {as_number('ts')} IS NOT NULL"
    " AND (requested_model IS NOT NULL OR served_model IS NOT NULL)"
)


def _figure(column: str) -> str:
    return f"coalesce(sum({as_number(column)}), 0)"


_ROLL_MINUTES = (
    f"INSERT INTO traffic_minutes ({_KEY_LIST}, requests, errors, tokens_in,"
    f" tokens_out) SELECT {', '.join(_KEYS)}, count(*),"
    # An unreadable status counts as an error, as `herd traces stats` does.
    f" sum(coalesce({as_number('status')} >= 400, 1) OR error_class IS NOT NULL),"
    f" {_figure('tokens_in')}, {_figure('tokens_out')}"
    f" FROM traces WHERE {_ROWS} GROUP BY 1, 2, 3, 4"
    f" ON CONFLICT ({_KEY_LIST}) DO UPDATE SET"
    " requests = requests + excluded.requests, errors = errors + excluded.errors,"
    " tokens_in = tokens_in + excluded.tokens_in,"
    " tokens_out = tokens_out + excluded.tokens_out"
)
_ALIASED = ", ".join(f"{e} AS {n}" for e, n in zip(_KEYS, _KEY_COLUMNS, strict=True))
_ROLL_LATENCY = (
    f"INSERT INTO traffic_latency ({_KEY_LIST}, metric, bin, n)"
    f" SELECT {_KEY_LIST}, metric, bin, count(*) FROM ("
    + " UNION ALL ".join(
        f"SELECT {_ALIASED}, {metric} AS metric, {_bin(column)} AS bin"
        f" FROM traces WHERE {_ROWS} AND {as_number(column)} IS NOT NULL"
        for metric, column in ((TTFT, "ttft_ms"), (DURATION, "duration_ms"))
    )
    + ") WHERE true GROUP BY 1, 2, 3, 4, 5, 6"
    f" ON CONFLICT ({_KEY_LIST}, metric, bin) DO UPDATE SET n = n + excluded.n"
)
#: The largest trace id: `roll` adds the rows above it.
LAST_ID = "SELECT coalesce(max(id), 0) FROM traces"


def roll(execute: Callable[..., Any], after: int) -> None:
    """Add the traces whose id is above `after` (those the transaction under
    way wrote) to the rollup. `execute` is the connection's."""
    params = {"after": after}
    execute(_ROLL_MINUTES, params)
    execute(_ROLL_LATENCY, params)


def prune(execute: Callable[..., Any], cutoff: float) -> None:
    """Delete the rollup's minutes before `cutoff` (a whole minute)."""
    execute("DELETE FROM traffic_minutes WHERE minute < ?", (cutoff,))
    execute("DELETE FROM traffic_latency WHERE minute < ?", (cutoff,))


def create(conn: sqlite3.Connection) -> None:
    """The tables, filled from every trace already kept (an upgraded router
    shows its history): the migration that adds the rollup to traces.db."""
    key = ", ".join(f"{n} NOT NULL" for n in _KEY_COLUMNS)
    conn.execute(
        f"CREATE TABLE traffic_minutes ({key}, requests INTEGER, errors INTEGER,"
        f" tokens_in INTEGER, tokens_out INTEGER, PRIMARY KEY ({_KEY_LIST}))"
        " WITHOUT ROWID"
    )
    conn.execute(
        f"CREATE TABLE traffic_latency ({key}, metric INTEGER NOT NULL,"
        " bin INTEGER NOT NULL, n INTEGER,"
        f" PRIMARY KEY ({_KEY_LIST}, metric, bin)) WITHOUT ROWID"
    )
    with_ln(conn)
    roll(conn.execute, 0)


def with_ln(conn: sqlite3.Connection) -> None:
    """Make sure `conn`'s SQL has `ln`: an SQLite built without its math
    functions lacks it, and gets Python's (the same bins, but the GIL is held
    for every value)."""
    try:
        conn.execute("SELECT ln(2)")
    except sqlite3.OperationalError:
        conn.create_function("ln", 1, _ln, deterministic=True)


def _ln(value: Any) -> float | None:
    try:
        return math.log(value)
    except (TypeError, ValueError):
        return None


def percentile(histogram: dict[int, int], pct: float) -> float | None:
    """Nearest-rank percentile of the values a {bin: count} histogram holds,
    within RELATIVE_ERROR (see the module docstring); None when empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(pct / 100 * total))
    seen = 0
    for bin_ in sorted(histogram):
        seen += histogram[bin_]
        if seen >= rank:
            return round(middle(bin_), 3)
    return round(middle(max(histogram)), 3)
