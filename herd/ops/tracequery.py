"""Reading traces.db: filtered rows, and per model/node/group/tag statistics.

The router writes one row per request (numbers and names only: there is no
prompt or reply text in a trace to show). This module only reads: the file is
opened read-only, so `herd traces` never takes a write lock from the router
and works for a user who may read the state directory but not write it.
A trace store from before tags existed reads as untagged.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.digits import decimal
from herd.errors import ConfigError
from herd.router.observe.rollup import NONE_KEY
from herd.router.observe.tags import split
from herd.router.observe.traces import DB_NAME
from herd.sqlread import as_number, as_text

#: The dimensions `herd traces stats` groups by, and what each reads.
DIMENSIONS = ("model", "node", "group", "tag")
UNTAGGED = "(untagged)"


#: The traces columns that hold figures; every other column is a name or text.
NUMBERS = frozenset(
    ("id", "ts", "status", "queue_ms", "ttft_ms", "duration_ms")
    + ("tokens_in", "tokens_out", "retries")
)


def _read_as_written(conn: sqlite3.Connection, wanted: list[str] | None = None) -> str:
    """The select list for `wanted` columns (default: all of them), each read as
    the router writes it: figures as numbers, the rest as text, whatever a
    damaged or hand-edited file holds (see as_text, as_number)."""
    names = wanted or [r[1] for r in conn.execute("PRAGMA table_info(traces)")]
    return ", ".join(
        f"{as_number(n) if n in NUMBERS else as_text(n)} AS {n}" for n in names
    )


@dataclass(frozen=True)
class Filters:
    """What `herd traces` narrows to (epoch seconds for the window)."""

    since: float | None = None
    until: float | None = None
    group: str | None = None
    tag: str | None = None
    model: str | None = None
    status: str | None = None


def open_traces(state_dir: str | Path) -> sqlite3.Connection:
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        raise ConfigError(
            f"no traces in {path} yet (the router writes them once it serves "
            "requests; pass --state-dir if herd keeps its state elsewhere)"
        )
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM traces LIMIT 1")
    except sqlite3.Error as ex:
        raise ConfigError(f"cannot read {path}: {ex}") from ex
    return conn


def _status_clause(status: str) -> tuple[str, list[Any]]:
    """`200`, `4xx`, `5xx`, `ok` (below 400) or `error` (400 and up)."""
    text = status.strip().lower()
    if text == "ok":
        return "status < 400", []
    if text == "error":
        return "status >= 400", []
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        base = int(text[0]) * 100
        return "status >= ? AND status < ?", [base, base + 100]
    code = decimal(text, 3)
    if code is not None and 100 <= code <= 599:
        return "status = ?", [code]
    raise ConfigError(
        f"--status {status!r}: expected a code (404), a class (5xx), ok or error"
    )


def _where(conn: sqlite3.Connection, f: Filters) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if f.since is not None:
        clauses.append("ts >= ?")
        args.append(f.since)
    if f.until is not None:
        clauses.append("ts < ?")
        args.append(f.until)
    if f.group:
        clauses.append("client = ?")
        args.append(f.group)
    if f.model:
        clauses.append("(served_model = ? OR requested_model = ?)")
        args += [f.model, f.model]
    if f.status:
        clause, more = _status_clause(f.status)
        clauses.append(clause)
        args += more
    if f.tag:
        if not has_tags(conn):
            clauses.append("0")
        else:  # tags are comma-joined and never contain a comma themselves
            clauses.append("instr(',' || tags || ',', ?) > 0")
            args.append(f",{f.tag},")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def has_tags(conn: sqlite3.Connection) -> bool:
    return any(r[1] == "tags" for r in conn.execute("PRAGMA table_info(traces)"))


def rows(
    conn: sqlite3.Connection, f: Filters, limit: int | None = None
) -> list[dict[str, Any]]:
    """Matching traces, oldest first; with `limit`, only the newest `limit`."""
    where, args = _where(conn, f)
    sql = f"SELECT {_read_as_written(conn)} FROM traces{where}"
    if limit:
        sql = f"SELECT * FROM ({sql} ORDER BY ts DESC, id DESC LIMIT ?)"
        args.append(limit)
    found = [dict(r) for r in conn.execute(sql + " ORDER BY ts, id", args)]
    for row in found:
        row.setdefault("tags", None)
    return found


@dataclass
class Bucket:
    """Running figures for one key of one dimension."""

    count: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    ttft: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)

    def add(self, row: sqlite3.Row) -> None:
        self.count += 1
        status = row["status"]  # None: unreadable, counted as an error
        if status is None or status >= 400 or row["error_class"] is not None:
            self.errors += 1
        self.tokens_in += row["tokens_in"] or 0
        self.tokens_out += row["tokens_out"] or 0
        if row["ttft_ms"] is not None:
            self.ttft.append(row["ttft_ms"])
        if row["duration_ms"] is not None:
            self.duration.append(row["duration_ms"])

    @staticmethod
    def percentile(values: Any, pct: float) -> float | None:
        """Nearest-rank percentile of `values` (a subclass may keep them
        otherwise: the dashboard's as histograms)."""
        values.sort()
        return percentile(values, pct)

    def summary(self) -> dict[str, Any]:
        pick = self.percentile
        return {
            "count": self.count,
            "errors": self.errors,
            "error_rate": round(self.errors / self.count, 4) if self.count else 0.0,
            "ttft_p50_ms": pick(self.ttft, 50),
            "ttft_p95_ms": pick(self.ttft, 95),
            "duration_p50_ms": pick(self.duration, 50),
            "duration_p95_ms": pick(self.duration, 95),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
        }


def percentile(ordered: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


def _keys(row: sqlite3.Row, dimension: str, tagged: bool) -> Iterator[str]:
    if dimension == "model":
        yield row["served_model"] or row["requested_model"] or NONE_KEY
    elif dimension == "node":
        yield row["node"] or NONE_KEY
    elif dimension == "group":
        yield row["client"] or NONE_KEY
    else:
        tags = split(row["tags"]) if tagged else []
        yield from tags or [UNTAGGED]


def stats(
    conn: sqlite3.Connection, f: Filters, dimensions: tuple[str, ...] = DIMENSIONS
) -> dict[str, Any]:
    """Count, error rate, p50/p95 TTFT and duration, tokens: overall and per key
    of each dimension (a request with two tags counts under both)."""
    where, args = _where(conn, f)
    tagged = has_tags(conn)
    wanted = "status error_class tokens_in tokens_out ttft_ms duration_ms"
    wanted += " served_model requested_model node client" + (" tags" if tagged else "")
    columns = _read_as_written(conn, wanted.split())
    total = Bucket()
    by: dict[str, dict[str, Bucket]] = {d: {} for d in dimensions}
    for row in conn.execute(f"SELECT {columns} FROM traces{where}", args):
        total.add(row)
        for dimension in dimensions:
            for key in _keys(row, dimension, tagged):
                by[dimension].setdefault(key, Bucket()).add(row)
    return {
        "total": total.summary(),
        "by": {
            d: [
                {"key": key, **bucket.summary()}
                for key, bucket in sorted(
                    by[d].items(), key=lambda kv: (-kv[1].count, kv[0])
                )
            ]
            for d in dimensions
        },
    }
