"""What herd.db says: recent audit events (and whether the chain holds) and
the bundle catalog that `herd plan` plans from.

Both are read through a read-only connection, so the dashboard never takes
the write lock `herd apply` needs, and work before anything was applied.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlite_utils

from herd.ops import auditlog
from herd.ops.chain import verify
from herd.reconcile.actions import Imported
from herd.router.api.body import deeper_than
from herd.store import DB_NAME

AUDIT_ROWS = 50
#: Nesting of an audit detail shown as JSON, at most (herd writes 2 or 3).
DETAIL_DEPTH = 16


def _open(state_dir: str | Path) -> sqlite_utils.Database | None:
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    return sqlite_utils.Database(conn)


def audit_view(state_dir: str | Path, now: float, limit: int = AUDIT_ROWS) -> dict:
    """The newest `limit` audit rows (newest first) and the chain's verdict."""
    try:
        db = _open(state_dir)
    except sqlite3.Error as ex:
        return {"generated_at": now, "available": False, "reason": str(ex)}
    if db is None:
        return {
            "generated_at": now,
            "available": False,
            "reason": "no herd.db yet (nothing applied)",
        }
    try:
        if "audit" not in db.table_names():
            return {"generated_at": now, "available": True, "events": [], "chain": None}
        events = []
        # A blob (a damaged or edited file: `herd audit verify` judges it)
        # is shown as SQL quotes it: as bytes it would fail the JSON encoder.
        columns = ", ".join(
            f"CASE typeof({c}) WHEN 'blob' THEN quote({c}) ELSE {c} END AS {c}"
            for c in ("time", "user", "action", "revision", "detail")
        )
        for row in db.query(
            f"SELECT id, {columns} FROM audit ORDER BY id DESC LIMIT ?", [limit]
        ):
            row["detail"] = _detail(row["detail"])
            events.append(row)
        chain = None
        if "hash" in db["audit"].columns_dict:
            chain = verify(auditlog.chain(db), auditlog.anchor(db)).as_dict()
        return {
            "generated_at": now,
            "available": True,
            "events": events,
            "chain": chain,
        }
    except sqlite3.Error as ex:
        return {"generated_at": now, "available": False, "reason": str(ex)}
    finally:
        db.close()


def _detail(text: Any) -> Any:
    """An event's detail as the JSON it was written as, or its text when it
    is not JSON, or nests deeper than any detail herd writes (which could
    exhaust the encoder's recursion limit)."""
    if not isinstance(text, str):
        return text
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if isinstance(value, dict | list) and deeper_than(value, DETAIL_DEPTH):
        return text
    return value


def bundle_catalog(state_dir: str | Path) -> tuple[dict[str, Imported], set[str]]:
    """Imported models and bundle names (herd.reconcile.session.catalog)."""
    try:
        db = _open(state_dir)
    except sqlite3.Error:
        return {}, set()
    if db is None:
        return {}, set()
    # Imported here: the planner's I/O module is not needed until a dashboard asks.
    from herd.reconcile.session import catalog

    try:
        return catalog(SimpleNamespace(db=db))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, AttributeError):
        # A value of the wrong type (a damaged or edited herd.db): read as no
        # catalog, as an unreadable file is, not a 500 on every overview.
        return {}, set()
    finally:
        db.close()
