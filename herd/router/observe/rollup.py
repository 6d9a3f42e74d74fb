"""The traffic rollup: per-minute totals of traces.db, rolled up as a dashboard reads.

The dashboard's traffic view charts an hour and a day of model requests. Read
from the trace rows, each refresh cost CPU in proportion to the traffic (0.45 s
for 100,000 traces in the hour); read from these tables it costs in proportion
to the minutes shown and the keys and histogram bins seen in them.

A key is (client group, model, tags): a NULL group is stored as NONE_KEY,
NULL tags as '' (a primary key holds no NULL), the model is the served one,
else the requested one. Only model requests are counted (traces naming a
model), as the traffic view counts them.

- `traffic_minutes`: per minute and key, requests, errors, tokens in and out;
- `traffic_latency_minutes`: per minute, the TTFT and duration histograms of
  all keys together (the hour's chart and totals);
- `traffic_latency`: per quarter hour (QUARTER_S) and key, the histograms
  (the day's chart, and the percentiles per group, model and tag);
- `traffic_rolled`: the largest trace id counted in the three.

Why these grains: a histogram costs a row per bin that holds a value, so per
minute and key it would hold about a row per trace at 100,000 traces an hour,
and cost as much to read as the traces. Per minute for all keys, and per
quarter per key, they are a tenth of that and do not grow with the traffic.

`roll` adds the traces above `traffic_rolled` and moves it, in one
transaction, so the tables always count exactly the traces up to that id,
whichever worker wrote them. The dashboard rolls up before it reads
(herd.dashboard.traffic), not the trace writer: each trace costs a few
microseconds of SQLite to roll up (its key and bins grouped three ways, and
a histogram row per key and bin written), which on the writer would be paid
by every request, dashboard or not (it doubled the writer's cost per row);
rolled up when a dashboard asks, each trace is still counted once, instead
of once per refresh as when the traffic was read from the rows, and the
statements are SQLite's work (the GIL is released). Only traces of the last
day (the longest window) are rolled up; older ones a first refresh skips.
Pruning deletes whole quarter hours of traces and rollup alike (`prune`).

Histogram bins (milliseconds), 8 per doubling from 0.1 ms: bin 0 holds values
below 0.1 ms (and negative ones); bin b in 1..200 holds [0.1 * 2**((b-1)/8),
0.1 * 2**(b/8)); bin 201 holds 2**25 * 0.1 ms (about 56 minutes) and up. A
percentile is read as the nearest-rank value's bin and reported as that bin's
geometric middle, so from 0.1 ms to 56 minutes it is within 2**(1/16) - 1 =
4.4% (RELATIVE_ERROR) of the exact nearest-rank value; below 0.1 ms within
0.05 ms; beyond 56 minutes it reads as 56 minutes.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from typing import Any

from herd.sqlread import as_number, is_number

#: What a NULL client group is stored and shown as.
NONE_KEY = "(none)"
#: The histograms' metrics (the `metric` column).
TTFT, DURATION = 0, 1
#: Bins per doubling, the lowest bound (ms) and the count of bounded bins.
PER_DOUBLING = 8
LOWEST_MS = 0.1
BOUNDED = 200
TOP_BIN = BOUNDED + 1
TOP_MS = LOWEST_MS * 2 ** (BOUNDED / PER_DOUBLING)
#: The largest relative error of a percentile between LOWEST_MS and TOP_MS.
RELATIVE_ERROR = 2 ** (1 / (2 * PER_DOUBLING)) - 1
MINUTE_S = 60
#: The per-key histograms' grain; traces are pruned a whole quarter at a time.
QUARTER_S = 900
#: How far back a roll-up reaches: the longest window, and its first quarter.
ROLL_BACK_S = 86400 + QUARTER_S
#: Trace ids rolled up per transaction, at most: the first roll-up after an
#: upgrade (or after a long time without a dashboard) takes a day of traces,
#: and the trace writers wait for the write lock while one runs (~0.1 s).
ROLL_MAX = 10_000


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


# The writer's own rows hold text or NULL names and numbers or NULL figures,
# so the keys are plain coalesces (the cheapest SQL per row). A damaged row
# met by the backfill may put a blob or a number in a key: the readers read
# keys as text (herd.sqlread.as_text).
_KEY = (
    f"coalesce(client, '{NONE_KEY}'),"
    " coalesce(served_model, requested_model), coalesce(tags, '')"
)
_ROWS = (
    f"id > :after AND id <= :through AND {is_number('ts')} AND ts >= :since"
    " AND (requested_model IS NOT NULL OR served_model IS NOT NULL)"
)


def _slot(grain: int) -> str:
    return f"CAST(ts AS INTEGER) / {grain} * {grain}"


def _figure(column: str) -> str:
    return f"coalesce(sum({as_number(column)}), 0)"


_ROLL_MINUTES = (
    "INSERT INTO traffic_minutes (minute, client, model, tags, requests, errors,"
    f" tokens_in, tokens_out) SELECT {_slot(MINUTE_S)}, {_KEY}, count(*),"
    # An unreadable status counts as an error, as `herd traces stats` does.
    " sum(coalesce(status >= 400, 1) OR error_class IS NOT NULL),"
    f" {_figure('tokens_in')}, {_figure('tokens_out')}"
    f" FROM traces WHERE {_ROWS} GROUP BY 1, 2, 3, 4"
    " ON CONFLICT (minute, client, model, tags) DO UPDATE SET"
    " requests = requests + excluded.requests, errors = errors + excluded.errors,"
    " tokens_in = tokens_in + excluded.tokens_in,"
    " tokens_out = tokens_out + excluded.tokens_out"
)


def _roll_latency(table: str, key: list[str], select: list[str]) -> str:
    """INSERT the histograms of the rows into `table` keyed `key` (the SQL of
    each in `select`), both metrics in one statement."""
    branches = " UNION ALL ".join(
        f"SELECT {', '.join(select)}, {metric}, {_bin(column)} FROM traces"
        f" WHERE {_ROWS} AND {is_number(column)}"
        for metric, column in ((TTFT, "ttft_ms"), (DURATION, "duration_ms"))
    )
    columns = ", ".join([*key, "metric", "bin"])
    return (
        f"INSERT INTO {table} ({columns}, n) SELECT *, count(*) FROM ({branches})"
        f" WHERE true GROUP BY {', '.join(str(i + 1) for i in range(len(key) + 2))}"
        f" ON CONFLICT ({columns}) DO UPDATE SET n = n + excluded.n"
    )


_ROLL_TOTALS = _roll_latency("traffic_latency_minutes", ["minute"], [_slot(MINUTE_S)])
_ROLL_KEYS = _roll_latency(
    "traffic_latency",
    ["slot", "client", "model", "tags"],
    [_slot(QUARTER_S), _KEY],
)
_LAST_ID = "SELECT coalesce(max(id), 0) FROM traces"


def roll(execute: Callable[..., Any], now: float, most: int) -> int:
    """Add the traces above `traffic_rolled` (at most `most` ids, of the
    last ROLL_BACK_S before `now`) to the rollup and move it past them;
    returns how many ids that spans. `execute` is the connection's, inside a
    write transaction."""
    (after,) = execute("SELECT id FROM traffic_rolled").fetchone()
    (last,) = execute(_LAST_ID).fetchone()
    if not isinstance(after, int) or not 0 <= after <= last:
        after = last  # damaged: count nothing twice, miss what came before
    through = min(last, after + most)
    if through <= after:
        return 0
    params = {"after": after, "through": through, "since": now - ROLL_BACK_S}
    for sql in (_ROLL_MINUTES, _ROLL_TOTALS, _ROLL_KEYS):
        execute(sql, params)
    execute("UPDATE traffic_rolled SET id = ?", (through,))
    return through - after


def prune(execute: Callable[..., Any], cutoff: float) -> int:
    """Delete the traces before `cutoff`, rounded down to a whole quarter
    hour, and their rollup; returns how many traces."""
    cutoff = math.floor(cutoff / QUARTER_S) * QUARTER_S
    count = execute("DELETE FROM traces WHERE ts < ?", (cutoff,)).rowcount
    execute("DELETE FROM traffic_minutes WHERE minute < ?", (cutoff,))
    execute("DELETE FROM traffic_latency_minutes WHERE minute < ?", (cutoff,))
    execute("DELETE FROM traffic_latency WHERE slot < ?", (cutoff,))
    if execute("SELECT max(id) FROM traces").fetchone()[0] is None:
        # No trace left: SQLite numbers the next one 1 again.
        execute("UPDATE traffic_rolled SET id = 0")
    return count


def create(conn: sqlite3.Connection) -> None:
    """The tables, empty: the migration that adds the rollup to traces.db
    (the first roll-up fills them from the traces kept, so an upgraded router
    shows its last day)."""
    key = "client NOT NULL, model NOT NULL, tags NOT NULL"
    histogram = "metric INTEGER NOT NULL, bin INTEGER NOT NULL, n INTEGER"
    for sql in (
        f"CREATE TABLE traffic_minutes (minute NOT NULL, {key}, requests INTEGER,"
        " errors INTEGER, tokens_in INTEGER, tokens_out INTEGER,"
        " PRIMARY KEY (minute, client, model, tags))",
        f"CREATE TABLE traffic_latency_minutes (minute NOT NULL, {histogram},"
        " PRIMARY KEY (minute, metric, bin))",
        f"CREATE TABLE traffic_latency (slot NOT NULL, {key}, {histogram},"
        " PRIMARY KEY (slot, client, model, tags, metric, bin))",
    ):
        conn.execute(sql + " WITHOUT ROWID")
    conn.execute("CREATE TABLE traffic_rolled (id INTEGER NOT NULL)")
    conn.execute("INSERT INTO traffic_rolled VALUES (0)")


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
