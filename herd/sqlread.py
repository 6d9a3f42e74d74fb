"""SQL that reads a traces.db column as the router writes it, whatever it holds.

The router writes names as text and figures as numbers, but a damaged or
hand-edited file may hold anything: a blob would reach Python as bytes (or
fail to decode) and JSON as an error, text in a figure a sort of mixed types.
"""

from __future__ import annotations


def as_text(column: str, default: str = "NULL") -> str:
    """SQL for `column` read as text: `default` for NULL, and SQL's quoting of
    a number or a blob (whose bytes need not be UTF-8)."""
    return (
        f"CASE typeof({column}) WHEN 'text' THEN {column} WHEN 'null' THEN {default}"
        f" ELSE quote({column}) END"
    )


def is_number(column: str) -> str:
    """SQL true where SQLite holds an integer or a real in `column` (text or a
    blob in a figure comes from a damaged file)."""
    return f"typeof({column}) IN ('integer', 'real')"


def as_number(column: str) -> str:
    """SQL for `column` read as a number: NULL unless `is_number`."""
    return f"CASE WHEN {is_number(column)} THEN {column} END"
