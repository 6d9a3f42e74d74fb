"""Time windows and the three shapes a reader prints: a table, JSON, CSV.

`--since`/`--until` take a duration back from now (`90s`, `30m`, `24h`, `7d`,
`2w`) or a UTC date or time (`2026-12-01`, `2026-12-01T10:00`, `...Z`). Tables
are for people (columns sized to their content); JSON and CSV are for
scripts and spreadsheets and carry every column.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from herd.errors import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, option: str, now: dt.datetime | None = None) -> dt.datetime:
    """A point in time (UTC) from a duration back from `now` or an ISO date/time."""
    now = now or dt.datetime.now(dt.UTC)
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if match:
        return now - dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option} {text!r}: expected a duration (30m, 24h, 7d) or a UTC "
            "date/time (2026-12-01, 2026-12-01T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def iso(when: dt.datetime) -> str:
    """The audit table's time format (UTC, seconds, trailing Z)."""
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def window(
    since: str | None, until: str | None, default_since: str | None = None
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """`--since`/`--until` as datetimes; refuses a window that ends before it starts."""
    start = (
        parse_time(since or default_since, "--since")
        if (since or default_since)
        else None
    )
    end = parse_time(until, "--until") if until else None
    if start and end and end <= start:
        raise ConfigError(f"--until {until!r} is not after --since {since!r}")
    return start, end


def table(
    rows: Sequence[Sequence[Any]], header: Sequence[str], out: TextIO | None = None
) -> None:
    """Columns padded to their widest cell; numbers right-aligned."""
    out = out or sys.stdout
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in header]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(header))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i])
            for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    out.write(line(header) + "\n")
    for row in cells:
        out.write(line(row) + "\n")


#: Control characters (C0, DEL, C1): shown escaped, so a stored value can
#: never move the cursor or recolour the operator's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", str(value))


def shown(value: Any) -> Any:
    """`value` (a router's or an agent's JSON) with every string made safe to
    print on a terminal: line breaks, escape sequences and other characters
    that are not printable (bidirectional overrides too) written as Python
    escapes (`\\n`, `\\x1b`, `\\u202e`). What an agent or a LAN announcement
    reports (a version, a model name, an mDNS instance) then cannot forge a
    line of `herd status` or drive the operator's terminal."""
    if isinstance(value, str):
        if value.isprintable():
            return value
        return "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
            for c in value
        )
    if isinstance(value, dict):
        return {shown(k): shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shown(v) for v in value]
    return value


def write_json(value: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    json.dump(value, out, indent=2, sort_keys=True, ensure_ascii=False)
    out.write("\n")


def write_csv(
    rows: Iterable[dict[str, Any]], columns: Sequence[str], out: TextIO | None = None
) -> None:
    """RFC 4180 CSV with a header line; nested values as compact JSON."""
    out = out or sys.stdout
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in columns])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return value
