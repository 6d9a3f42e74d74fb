"""Aggregates of STATE_DIR/traces.db for the health checks (read-only SQL).

Error rate over the last 5 minutes, p95 time to first token per model over
the last 5 minutes and over the 24 hours before, the database's size and its
oldest row. Opened read-only; every query is bounded by the `ts` index or a
LIMIT, and callers cache the result (herd.health.gather).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from pathlib import Path

from herd.health.snapshot import TraceFacts, TtftFacts
from herd.sqlread import as_text, is_number

DB_NAME = "traces.db"
RECENT_S = 300.0
BASELINE_S = 86400.0
#: TTFT samples read for the recent window (more are not needed for a p95).
RECENT_ROWS_MAX = 50_000
#: Rows read for the 24-hour baselines, at most (a busier day is sampled).
BASELINE_ROWS_MAX = 50_000
#: Only numbers are TTFTs (a damaged or hand-edited file may hold anything).
_NUMBER = is_number("ttft_ms")


def p95(values: list[float]) -> float | None:
    """The 95th percentile (nearest rank) of `values`, or None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * (len(ordered) - 1) + 0.5))]


def db_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def trace_facts(
    state_dir: str | os.PathLike[str],
    now: float,
    retention_days: int,
    min_recent: int = 10,
) -> TraceFacts | None:
    """The aggregates, or None when there is no traces.db (or no table yet)."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return None
    try:
        return _facts(db, path, now, retention_days, min_recent)
    except (sqlite3.Error, TypeError, ValueError, OverflowError):
        return None  # a damaged file: the checks say the traces are unknown
    finally:
        db.close()


def _baselines(
    db: sqlite3.Connection, since: float, models: list[str]
) -> dict[str, tuple[int, float | None]]:
    """Each model's (samples, p95 TTFT) over the BASELINE_S before `since`.

    One pass over the day for every model (a window function ranks each
    model's values; a query per model walked the day's rows once per model
    and sorted them again: 12 s for 200,000 rows and 7 models), over at most
    BASELINE_ROWS_MAX rows: a busier day is sampled every n-th by id (the id
    is in the `ts` index, so rows left out are never read).
    """
    if not models:
        return {}
    window = (since - BASELINE_S, since)
    (rows,) = db.execute(
        "SELECT count(*) FROM traces WHERE ts >= ? AND ts < ?", window
    ).fetchone()
    every = max(1, math.ceil(rows / BASELINE_ROWS_MAX))
    query = (
        "WITH ranked AS (SELECT served_model AS model, ttft_ms AS value,"
        " row_number() OVER (PARTITION BY served_model ORDER BY ttft_ms) AS rank,"
        " count(*) OVER (PARTITION BY served_model) AS n"
        " FROM traces WHERE ts >= ? AND ts < ? AND id % ? = 0"
        f" AND {_NUMBER} AND status < 500"
        " AND served_model IN (SELECT value FROM json_each(?)))"
        # The nearest rank, as p95() takes it.
        " SELECT model, n, value FROM ranked"
        " WHERE rank = CAST(0.95 * (n - 1) + 0.5 AS INTEGER) + 1"
    )
    found = db.execute(query, (*window, every, json.dumps(models)))
    return {model: (n, value) for model, n, value in found}


def _facts(
    db: sqlite3.Connection, path: Path, now: float, retention_days: int, min_recent: int
) -> TraceFacts:
    since = now - RECENT_S
    total, errors = db.execute(
        "SELECT count(*), coalesce(sum(status >= 500), 0) FROM traces WHERE ts >= ?",
        (since,),
    ).fetchone()
    worst = None
    if errors:
        row = db.execute(
            "SELECT coalesce(node, '-'), coalesce(served_model, requested_model, '-'),"
            " count(*) FROM traces WHERE ts >= ? AND status >= 500"
            " GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 1",
            (since,),
        ).fetchone()
        if row:
            worst = f"node {row[0]}, model {row[1]} ({row[2]})"
    recent: dict[str, list[float]] = {}
    for model, value in db.execute(
        f"SELECT {as_text('served_model')}, ttft_ms FROM traces WHERE ts >= ? AND"
        f" {_NUMBER} AND served_model IS NOT NULL AND status < 500 LIMIT ?",
        (since, RECENT_ROWS_MAX),
    ):
        recent.setdefault(model, []).append(value)
    judged = sorted(m for m, values in recent.items() if len(values) >= min_recent)
    baseline = _baselines(db, since, judged)
    ttft = []
    for model, values in sorted(recent.items()):
        base_count, base_p95 = baseline.get(model, (0, None))
        ttft.append(TtftFacts(model, p95(values), len(values), base_p95, base_count))
    (oldest,) = db.execute("SELECT min(ts) FROM traces").fetchone()
    if not isinstance(oldest, int | float):
        # SQLite orders numbers before text and blobs: min(ts) is a number
        # whenever one row holds one (and stays an index lookup).
        oldest = None
    return TraceFacts(
        recent_total=total,
        recent_errors=errors,
        worst=worst,
        ttft=tuple(ttft),
        db_bytes=db_bytes(path),
        oldest_age_s=None if oldest is None else max(0.0, now - oldest),
        retention_days=retention_days,
    )
