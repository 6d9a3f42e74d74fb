"""The audit hash chain: what a row's hash covers, and how a chain is checked.

Every audit row carries `prev_hash` (the `hash` of the row before it) and
`hash`, the sha256 of its own canonical content: a compact JSON array of
`[id, time, user, action, revision, detail, prev_hash]` exactly as stored.
Changing any field of a row, deleting a row inside the chain, or re-typing a
value by hand breaks the hash of that row or the link of the next one.

The chain starts at GENESIS. When retention pruning removes the oldest rows,
the hash the first kept row points back to is recorded as the anchor (with
that row's id), so a pruned chain still verifies from its first row on; rows
removed at the start without a matching anchor are reported.

Pure functions only: the SQL side is herd.ops.auditlog.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The `prev_hash` of the first row ever written.
GENESIS = "0" * 64

#: The stored fields a row's hash covers, in order (then its `prev_hash`).
FIELDS = ("id", "time", "user", "action", "revision", "detail")


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes a row's hash is computed over (its values exactly as stored)."""
    values = [row.get(name) for name in FIELDS] + [row.get("prev_hash")]
    if isinstance(values[5], bytes):  # a detail re-typed as BLOB by a hand edit
        values[5] = "blob:" + values[5].hex()
    text = json.dumps(values, separators=(",", ":"), ensure_ascii=False, default=repr)
    return text.encode("utf-8", "surrogatepass")


def row_hash(row: Mapping[str, Any]) -> str:
    """The sha256 (hex) of a row's canonical content, its `prev_hash` included."""
    return hashlib.sha256(canonical(row)).hexdigest()


@dataclass(frozen=True)
class Anchor:
    """Where a pruned chain starts: row `first_id` must point back to `prev_hash`."""

    first_id: int
    prev_hash: str


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a chain: intact, or the first broken row and why."""

    rows: int
    first_id: int | None
    last_id: int | None
    head_hash: str | None
    broken_id: int | None = None
    reason: str | None = None
    anchor: Anchor | None = None

    @property
    def intact(self) -> bool:
        return self.broken_id is None and self.reason is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "rows": self.rows,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "head_hash": self.head_hash,
            "broken_id": self.broken_id,
            "reason": self.reason,
            "anchor": (
                {"first_id": self.anchor.first_id, "prev_hash": self.anchor.prev_hash}
                if self.anchor
                else None
            ),
        }


def verify(rows: Iterable[Mapping[str, Any]], anchor: Anchor | None) -> Verdict:
    """Walk `rows` (in id order) and stop at the first one that breaks the chain.

    The first row must point back to the anchor (or to GENESIS when nothing
    was ever pruned); every later row to the row before it; and each row's
    `hash` must be the hash of its own content.
    """
    count = 0
    first_id = last_id = None
    expected = anchor.prev_hash if anchor else GENESIS
    prev_id: int | None = None
    for row in rows:
        row_id = row.get("id")
        count += 1
        if first_id is None:
            first_id = row_id
            if anchor is not None and row_id != anchor.first_id:
                return _broken(
                    count, first_id, last_id, expected, row_id, anchor,
                    f"the chain should start at row {anchor.first_id} (the anchor "
                    f"recorded by the last pruning) but starts at row {row_id}: "
                    "rows were deleted or added outside herd",
                )  # fmt: skip
        if row.get("prev_hash") != expected:
            return _broken(
                count, first_id, last_id, expected, row_id, anchor,
                _link_problem(prev_id, row_id, anchor),
            )  # fmt: skip
        actual = row_hash(row)
        if row.get("hash") != actual:
            return _broken(
                count, first_id, last_id, expected, row_id, anchor,
                "its content does not match its hash: the row was altered "
                "outside herd",
            )  # fmt: skip
        expected = actual
        prev_id = last_id = row_id
    if count == 0 and anchor is not None:
        return _broken(
            0, None, None, None, anchor.first_id, anchor,
            "the audit table is empty but pruning left its chain starting at "
            f"row {anchor.first_id}: every row was deleted outside herd",
        )  # fmt: skip
    return Verdict(count, first_id, last_id, expected if count else None, anchor=anchor)


def _link_problem(prev_id: int | None, row_id: Any, anchor: Anchor | None) -> str:
    """Why row `row_id` does not point back to what comes before it."""
    if prev_id is None:
        start = "the pruning anchor" if anchor else "the start of the chain"
        return (
            f"it does not link to {start}: rows before it were deleted, or it "
            "was altered, outside herd"
        )
    if isinstance(row_id, int) and row_id > prev_id + 1:
        missing = (
            f"row {prev_id + 1}"
            if row_id == prev_id + 2
            else (f"rows {prev_id + 1}..{row_id - 1}")
        )
        return f"it does not link to row {prev_id}: {missing} deleted outside herd"
    return (
        f"it does not link to row {prev_id}: one of the two was rewritten "
        "(hash recomputed) or a row was inserted outside herd"
    )


def _broken(
    count: int,
    first_id: int | None,
    last_id: int | None,
    head: str | None,
    broken_id: int | None,
    anchor: Anchor | None,
    reason: str,
) -> Verdict:
    return Verdict(count, first_id, last_id, head, broken_id, reason, anchor)
