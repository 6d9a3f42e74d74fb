"""The audit table in herd.db as a hash chain: append, prune with an anchor, read.

Writers go through `herd.store.Store.audit`, which calls `append` inside a
write transaction, so two processes auditing at once still build one chain.
`prune` only ever removes a prefix of the chain (the rows before the first
one young enough to keep, and never the newest row, the chain's head) and
records the hash the first kept row points back to in `audit_anchors`, so
`herd audit verify` still checks the whole kept chain. See herd.ops.chain for
what a hash covers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import sqlite_utils

from herd.ops.chain import GENESIS, Anchor, row_hash


def migrate_chain(db: sqlite_utils.Database) -> None:
    """Core schema v2: `prev_hash`/`hash` columns, chained over existing rows,
    and the `audit_anchors` table that pruning writes."""
    columns = db["audit"].columns_dict
    for name in ("prev_hash", "hash"):
        if name not in columns:
            db.execute(f"ALTER TABLE audit ADD COLUMN {name} TEXT")
    if "audit_anchors" not in db.table_names():
        db["audit_anchors"].create(
            {
                "id": int,
                "time": str,
                "user": str,
                "first_id": int,
                "prev_hash": str,
                "pruned": int,
            },
            pk="id",
            not_null={"time", "first_id", "prev_hash"},
        )
    prev = GENESIS
    for row in db.query("SELECT * FROM audit ORDER BY id"):
        row["prev_hash"] = prev
        prev = row_hash(row)
        db.execute(
            "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?",
            [row["prev_hash"], prev, row["id"]],
        )


def append(
    db: sqlite_utils.Database,
    *,
    time: str,
    user: str,
    action: str,
    revision: int | None,
    detail: dict[str, Any],
) -> int:
    """Add one row linked to the current head; call inside a write transaction."""
    head = db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    row: dict[str, Any] = {
        "id": head[0] + 1 if head else 1,
        "time": time,
        "user": user,
        "action": action,
        "revision": revision,
        "detail": json.dumps(detail, sort_keys=True),
        # An empty table with an anchor means rows were deleted behind herd's
        # back: the new chain starts over at GENESIS and verify reports it.
        "prev_hash": head[1] if head else GENESIS,
    }
    row["hash"] = row_hash(row)
    db["audit"].insert(row)
    return row["id"]


def anchor(db: sqlite_utils.Database) -> Anchor | None:
    """The anchor the last pruning recorded (None if the chain was never pruned)."""
    if "audit_anchors" not in db.table_names():
        return None
    row = db.execute(
        "SELECT first_id, prev_hash FROM audit_anchors ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return Anchor(row[0], row[1]) if row else None


def prune(db: sqlite_utils.Database, cutoff: str, *, time: str, user: str) -> int:
    """Delete the rows older than `cutoff` that start the chain; call inside a
    write transaction. Records the new anchor; returns how many rows went."""
    keep = db.execute(
        "SELECT id, prev_hash FROM audit WHERE time >= ? ORDER BY id LIMIT 1", [cutoff]
    ).fetchone()
    if keep is None:  # everything is old: keep the head, the chain's last link
        keep = db.execute(
            "SELECT id, prev_hash FROM audit ORDER BY id DESC LIMIT 1"
        ).fetchone()
    if keep is None:
        return 0
    first_id, prev_hash = keep
    pruned = db.execute("DELETE FROM audit WHERE id < ?", [first_id]).rowcount
    if pruned:
        db["audit_anchors"].insert(
            {
                "time": time,
                "user": user,
                "first_id": first_id,
                "prev_hash": prev_hash,
                "pruned": pruned,
            }
        )
    return pruned


def chain(db: sqlite_utils.Database) -> Iterator[dict[str, Any]]:
    """Every audit row in chain order (for verification)."""
    yield from db.query("SELECT * FROM audit ORDER BY id")


def select(
    db: sqlite_utils.Database,
    *,
    since: str | None = None,
    until: str | None = None,
    actions: tuple[str, ...] = (),
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Audit rows in a time window (ISO UTC strings, `until` exclusive), oldest
    first; `actions` match exactly or as a prefix ending in '.' (`node.`)."""
    where, args = [], []
    if since:
        where.append("time >= ?")
        args.append(since)
    if until:
        where.append("time < ?")
        args.append(until)
    if actions:
        alternatives = []
        for action in actions:
            if action.endswith("."):
                alternatives.append("substr(action, 1, ?) = ?")
                args += [len(action), action]
            else:
                alternatives.append("action = ?")
                args.append(action)
        where.append("(" + " OR ".join(alternatives) + ")")
    sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
    if limit is not None:  # the newest `limit`, still listed oldest first
        sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?)"
        args.append(limit)
    return list(db.query(sql + " ORDER BY id", args))
