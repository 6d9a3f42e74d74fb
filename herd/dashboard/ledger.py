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
from herd.store import DB_NAME

AUDIT_ROWS = 50


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
        for row in db.query(
            "SELECT id, time, user, action, revision, detail FROM audit"
            " ORDER BY id DESC LIMIT ?",
            [limit],
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
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


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
    finally:
        db.close()
