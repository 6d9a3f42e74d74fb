"""Agents heard announcing themselves over mDNS, admitted or not yet.

The worker that speaks mDNS stores what it hears in the `candidates` table of
the membership database; every worker lists them for `herd status`, each
marked admitted when a signed heartbeat of that name is live.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any


def store(db: sqlite3.Connection, found: Iterable[Any], now: float) -> None:
    """Replace the candidates with `found` (herd.discovery.mdns.Found)."""
    rows = [
        (
            f.instance,
            ",".join(f.addresses),
            f.port,
            json.dumps(dict(f.txt), sort_keys=True),
            now,
        )
        for f in found
    ]
    db.execute("BEGIN")
    try:
        db.execute("DELETE FROM candidates")
        db.executemany("INSERT INTO candidates VALUES (?, ?, ?, ?, ?)", rows)
    finally:
        db.execute("COMMIT")


def listing(db: sqlite3.Connection, members: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Announced agents by name, each marked admitted or not."""
    rows = db.execute(
        "SELECT instance, address, port, txt FROM candidates ORDER BY instance"
    ).fetchall()
    return [
        {
            "name": instance,
            "addresses": address.split(",") if address else [],
            "port": port,
            "txt": json.loads(txt),
            "admitted": instance in members,
        }
        for instance, address, port, txt in rows
    ]
