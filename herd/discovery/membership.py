"""Who has joined the fleet by heartbeat: shared by every router worker.

Members, used nonces and recent refusals live in one small SQLite database
(`STATE_DIR/discovery.db`, WAL) so that a replayed heartbeat is refused by
whichever gunicorn worker it reaches, and every worker routes to the same
nodes. Each worker keeps the members in memory and re-reads only rows that
changed, when SQLite says another connection wrote (`PRAGMA data_version`).

A member leaves on its goodbye, or when it has been silent for
`discovery.heartbeat_timeout_s`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from herd.discovery import candidates
from herd.discovery.frozen import build
from herd.discovery.heartbeat import Heartbeat
from herd.discovery.member import Member, beat_changes, doc_of, row_doc

log = logging.getLogger("herd.audit")

#: How often (at most) a worker looks for other workers' writes and expiries.
CHECK_S = 0.25
#: Refusals kept for `herd status` (older ones are only in the log).
KEEP_REFUSALS = 200
#: A member whose models, version and URL did not change has its row
#: rewritten at most this often (and at least three times per heartbeat
#: timeout, so other workers never expire it): its metrics reach the other
#: workers up to this late, its changes at once.
ROW_REFRESH_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
    name TEXT PRIMARY KEY, address TEXT NOT NULL, url TEXT NOT NULL,
    static_name TEXT, via TEXT, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    seq INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS nonces_ts ON nonces (ts);
CREATE TABLE IF NOT EXISTS candidates (
    instance TEXT PRIMARY KEY, address TEXT, port INTEGER, txt TEXT,
    seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, address TEXT, name TEXT,
    status INTEGER NOT NULL, reason TEXT NOT NULL);
"""
#: A member's row, written whole.
_UPSERT_MEMBER = "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


class Membership:
    """The live members and the nonce ledger, backed by SQLite."""

    def __init__(
        self,
        path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        shared: bool = True,
    ):
        self.path = str(path) if path else ":memory:"
        #: Other processes (router workers) use the same database: nonces are
        #: written through at once. A lone worker keeps them in memory only.
        self.shared = shared
        self._nonces: dict[str, float] = {}
        self.clock = clock
        self.monotonic = monotonic
        self.db = sqlite3.connect(
            self.path, isolation_level=None, timeout=5, check_same_thread=False
        )
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            # Members expire in seconds and nonces in a minute: losing the
            # last writes in a power cut costs nothing, an fsync per
            # heartbeat would.
            self.db.execute("PRAGMA synchronous=OFF")
        self.db.executescript(_SCHEMA)
        self.members: dict[str, Member] = {}
        self._by_url: dict[str, str] = {}
        self._pending: dict[str, tuple] = {}
        #: When each member's row was last queued for writing.
        self._written: dict[str, float] = {}
        #: Bumps whenever a member leaves (the fleet must drop it at once).
        self.departures = 0
        #: Bumps whenever the set of nodes (names, URLs) changes.
        self.generation = 0
        self.timeout_s = 15.0
        self._checked = float("-inf")
        self._data_version: int | None = None
        self._nonces_pruned = 0.0
        self._reload()

    # -- reads ---------------------------------------------------------------

    def check(self, timeout_s: float | None = None) -> int:
        """Catch up with other workers and expire silent members (rate-limited);
        returns the generation."""
        if timeout_s is not None:
            self.timeout_s = timeout_s
        now = self.monotonic()
        if now - self._checked < CHECK_S:
            return self.generation
        self._checked = now
        self.flush()
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self._reload()
        self._expire()
        return self.generation

    def refusals(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT time, address, name, status, reason FROM refusals "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("time", "address", "name", "status", "reason")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # -- writes --------------------------------------------------------------

    def use_nonce(self, nonce: str, skew_s: float) -> bool:
        """Record a nonce on its own; False if it was seen already (a replay)."""
        return self._nonce(nonce, skew_s)

    def holds(self, hb: Heartbeat, address: str) -> bool:
        """Whether the member `hb` names, from `address`, holds the inventory a
        partial heartbeat (models left out) names; if not, the agent is asked
        to send all of it. `beat` takes the version and models from it."""
        held = self.members.get(hb.name)
        return held is not None and (held.inventory, held.address) == (
            hb.inventory,
            address,
        )

    def beat(
        self,
        hb: Heartbeat,
        address: str,
        static_name: str | None,
        via: str,
        *,
        raw: bytes | None = None,
        nonce: str | None = None,
        skew_s: float = 30.0,
    ) -> Member | None:
        """Record an admitted heartbeat and its nonce in one transaction; None
        when the nonce was used before (a replay). Logs when a node joins.
        `raw` is the heartbeat's JSON as received (stored as is for the other
        workers, so it is not serialized again). A partial `hb` takes the
        version and models of the member that `holds` its inventory (checked
        here too: nothing else would stand in for them)."""
        now = self.clock()
        prev = self.members.get(hb.name)
        whole: Heartbeat | Member = hb
        if hb.partial:
            if prev is None or not self.holds(hb, address):
                raise ValueError(f"{hb.name}: partial heartbeat, inventory not held")
            # (Read from it, not built into a whole Heartbeat for each beat.)
            whole = prev
        first = prev.first_seen if prev and prev.url == hb.url else now
        text = raw.decode() if raw is not None else json.dumps(doc_of(hb, whole))
        # The text of the last beat that carried the whole inventory (for the
        # rows of later beats that leave it out).
        source = prev.source if hb.partial else text
        if source is None:
            source = json.dumps(doc_of(hb, whole))
        seq = time.time_ns()
        if nonce is not None and not self._nonce(nonce, skew_s):
            return None  # (one autocommit INSERT: atomic across workers)
        # Member rows reach the other workers in batches (see `flush`), and
        # only when something besides the metrics changed or the row is old.
        written = self._written.get(hb.name, float("-inf"))
        old_row = now - written >= min(ROW_REFRESH_S, self.timeout_s / 3)
        if old_row or beat_changes(prev, hb, static_name):
            # A partial beat's body lacks the models: the row gets them all.
            doc = row_doc(text, source if hb.partial else None)
            row = (hb.name, address, hb.url, static_name, via, first, now, seq, doc)
            self._pending[hb.name] = row
            self._written[hb.name] = now
        member = build(
            Member,
            name=hb.name,
            url=hb.url,
            address=address,
            static_name=static_name,
            via=via,
            first_seen=first,
            last_seen=now,
            seq=seq,
            interval_s=hb.interval_s,
            version=whole.version,
            ollama_error=whole.ollama_error,
            models=whole.models,
            loaded=whole.loaded,
            metrics=hb.metrics,
            inventory=hb.inventory,
            source=source,
        )
        self._put(member)
        if prev is None or (prev.url, prev.static_name) != (hb.url, static_name):
            self.generation += 1
            log.warning(
                "audit node.joined name=%s address=%s url=%s%s",
                hb.name,
                address,
                hb.url,
                f" static={static_name}" if static_name else "",
            )
        return member

    def leave(
        self,
        name: str,
        address: str,
        why: str,
        *,
        nonce: str | None = None,
        skew_s: float = 30.0,
    ) -> bool | None:
        """Remove `name` (its goodbye, from the address holding it); None when
        the nonce was used before (a replay)."""
        with self._transaction():
            if nonce is not None and not self._nonce(nonce, skew_s):
                return None
            cur = self.db.execute(
                "DELETE FROM members WHERE name = ? AND address = ?", (name, address)
            )
        member = self.members.get(name)
        here = member is not None and member.address == address
        if here:
            self._pending.pop(name, None)  # its row may not be written yet
            self._drop(name)
            self.departures += 1
        if cur.rowcount or here:
            log.warning("audit node.left name=%s address=%s (%s)", name, address, why)
        return bool(cur.rowcount) or here

    def flush(self) -> None:
        """Write the members' latest heartbeats in one transaction. Each beat's
        nonce is written at once (replays are refused across workers without
        delay); the rows only tell other workers what the node reported, so
        they go in batches at most `CHECK_S` apart."""
        if not self._pending:
            return
        rows, self._pending = list(self._pending.values()), {}
        if len(rows) == 1:
            # One statement is a transaction of its own (autocommit): the
            # same write, without a BEGIN and a COMMIT statement around it.
            self.db.execute(_UPSERT_MEMBER, rows[0])
            return
        with self._transaction():
            self.db.executemany(_UPSERT_MEMBER, rows)

    def holder(self, name: str) -> tuple[str, str] | None:
        """(address, url) of the live member called `name`, if any."""
        member = self.members.get(name)
        return (member.address, member.url) if member is not None else None

    def url_holder(self, url: str) -> str | None:
        """The name of the live member at `url`, if any."""
        return self._by_url.get(url)

    def _nonce(self, nonce: str, skew_s: float) -> bool:
        now = self.clock()
        if nonce in self._nonces:
            return False
        if self.shared:
            try:
                self.db.execute("INSERT INTO nonces VALUES (?, ?)", (nonce, now))
            except sqlite3.IntegrityError:
                return False
        self._nonces[nonce] = now
        if now - self._nonces_pruned > skew_s:
            # A nonce older than twice the skew bound can only come with a
            # stale timestamp, which is refused before the ledger is asked.
            self._nonces_pruned = now
            cutoff = now - 2 * skew_s
            self._nonces = {n: ts for n, ts in self._nonces.items() if ts >= cutoff}
            if self.shared:
                self.db.execute("DELETE FROM nonces WHERE ts < ?", (cutoff,))
        return True

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _put(self, member: Member) -> None:
        old = self.members.get(member.name)
        if old is not None and self._by_url.get(old.url) == old.name:
            del self._by_url[old.url]
        self.members[member.name] = member
        self._by_url[member.url] = member.name

    def _drop(self, name: str) -> Member | None:
        gone = self.members.pop(name, None)
        self._written.pop(name, None)
        if gone is not None:
            self.generation += 1
            if self._by_url.get(gone.url) == name:
                del self._by_url[gone.url]
        return gone

    def refuse(
        self, address: str | None, name: str | None, status: int, reason: str
    ) -> None:
        """One audit line for a refused heartbeat, and a row `herd status` shows."""
        # What a sender claims is shown to operators: printable ASCII only.
        name = _printable(name)[:64] if name else None
        reason = _printable(reason)
        log.warning(
            "audit heartbeat.refused status=%d address=%s name=%s reason=%s",
            status,
            address,
            name or "-",
            reason,
        )
        try:
            cur = self.db.execute(
                "INSERT INTO refusals (time, address, name, status, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.clock(), address, name, status, reason[:300]),
            )
            if cur.lastrowid and cur.lastrowid % 50 == 0:
                self.db.execute(
                    "DELETE FROM refusals WHERE id <= ?",
                    (cur.lastrowid - KEEP_REFUSALS,),
                )
        except sqlite3.Error as ex:  # the audit line above is what matters
            log.error("could not record a refusal: %s", ex)

    def set_candidates(self, found: list[Any]) -> None:
        """Agents currently announced over mDNS (herd.discovery.mdns.Found)."""
        candidates.store(self.db, found, self.clock())

    def candidates(self) -> list[dict[str, Any]]:
        """Announced agents, each marked admitted or not."""
        return candidates.listing(self.db, self.members)

    def close(self) -> None:
        self.flush()
        self.db.close()

    # -- internals -----------------------------------------------------------

    def _reload(self) -> None:
        rows = self.db.execute("SELECT name, seq FROM members").fetchall()
        seen = dict(rows)
        changed = False
        for name in [n for n in self.members if n not in seen]:
            self._drop(name)
            self.departures += 1
        for name, seq in seen.items():
            known = self.members.get(name)
            if known is not None and known.seq >= seq:
                continue  # (this worker heard a later beat than the row holds)
            row = self.db.execute(
                "SELECT * FROM members WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                continue
            member = Member.from_row(row)
            if known is None or (known.url, known.static_name) != (
                member.url,
                member.static_name,
            ):
                changed = True
            self._put(member)
        if changed:
            self.generation += 1

    def _expire(self) -> None:
        cutoff = self.clock() - self.timeout_s
        for member in [m for m in self.members.values() if m.last_seen < cutoff]:
            self._drop(member.name)
            self.departures += 1
            cur = self.db.execute(
                "DELETE FROM members WHERE name = ? AND seq = ?",
                (member.name, member.seq),
            )
            if cur.rowcount:
                log.warning(
                    "audit node.left name=%s address=%s (no heartbeat for %.0f s)",
                    member.name,
                    member.address,
                    self.timeout_s,
                )


def _printable(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)
