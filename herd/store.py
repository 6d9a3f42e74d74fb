"""The state store: SQLite (via sqlite-utils) in WAL mode, plus the `current` pointer.

Tables: `revisions` (every applied manifest, verbatim), `audit` (every apply,
rollback, bundle import/refusal/removal..., a tamper-evident hash chain: see
herd.ops.chain) and `audit_anchors` (where pruning left the chain starting).
Components that need tables of
their own call `Store.ensure(namespace, migrations)`; each namespace keeps its
own schema version in `_migrations`, so features migrate independently.

How a running router notices a new revision: after a revision is committed the
store replaces `STATE_DIR/current.json` (herd.pointer) atomically; the router
stats that one file (cheap) and reloads when its inode or mtime changes. The
lock on the state dir is held from the commit until the pointer is written, so
two racing applies cannot leave it on an older revision than the head. Every
revision read back is checked against its recorded sha256: bytes edited in
herd.db behind herd's back are refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from herd.errors import StateError
from herd.ops import auditlog
from herd.pointer import (  # noqa: F401 - read_pointer: re-exported
    POINTER_NAME,
    Pointer,
    read_pointer,
    state_lock,
    write_pointer,
)

DB_NAME = "herd.db"
BUSY_TIMEOUT_S = 30.0

Migration = Callable[[sqlite_utils.Database], None]


def _m1_core(db: sqlite_utils.Database) -> None:
    db["revisions"].create(
        {
            "id": int,
            "created": str,
            "user": str,
            "action": str,
            "sha256": str,
            "summary": str,
            "source": str,
            "base_dir": str,
            "rollback_of": int,
            "manifest": bytes,
        },
        pk="id",
        not_null={"created", "user", "action", "sha256", "manifest"},
    )
    db["audit"].create(
        {
            "id": int,
            "time": str,
            "user": str,
            "action": str,
            "revision": int,
            "detail": str,
        },
        pk="id",
        not_null={"time", "user", "action"},
    )
    db["audit"].create_index(["time"])


#: v2 chains the audit rows (hash columns, existing rows linked, anchors table).
CORE_MIGRATIONS: tuple[Migration, ...] = (_m1_core, auditlog.migrate_chain)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def current_user() -> str:
    """The OS user running the command, as recorded in revisions and audit."""
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return str(os.getuid())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Revision:
    id: int
    created: str
    user: str
    action: str
    sha256: str
    summary: str
    source: str
    base_dir: str
    rollback_of: int | None
    manifest: bytes

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Revision:
        fields = {k: row[k] for k in cls.__dataclass_fields__}
        if isinstance(fields["manifest"], str):  # re-typed by a hand edit
            fields["manifest"] = fields["manifest"].encode("utf-8", "surrogateescape")
        return cls(**fields)

    @property
    def intact(self) -> bool:
        """Whether the stored bytes still hash to the stored sha256."""
        return isinstance(self.manifest, bytes) and sha256_hex(self.manifest) == (
            self.sha256
        )

    def verified(self, where: str | os.PathLike[str]) -> Revision:
        """This revision, or StateError if its bytes no longer match its sha256."""
        if not self.intact:
            raise StateError(
                f"{where}: revision {self.id} does not match its recorded sha256 "
                "(herd.db was changed outside herd); refusing to use it"
            )
        return self


class Store:
    """One state directory. Cheap to open; open one per process or per thread."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        create: bool = True,
        readonly: bool = False,
        db_name: str = DB_NAME,
    ):
        """Open (creating if needed) `db_name` in `state_dir`.

        Busy, high-volume data (router traces) goes in its own `db_name` so it
        never contends with `herd apply` for the write lock. `readonly` is for
        commands that only look (plan, bundle list): they never create the
        directory or the database; a state not created yet reads as empty
        (`self.exists` tells which).
        """
        self.dir = Path(state_dir)
        path: Path | str = self.dir / db_name
        self.exists = Path(path).exists()
        if readonly:
            path = path if self.exists else ":memory:"
        elif create:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        elif not self.exists:
            raise StateError(
                f"no herd state in {self.dir} (run `herd apply FILE` first, "
                "or pass --state-dir)"
            )
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self.db = sqlite_utils.Database(conn)
            self._enable_wal()
            self.db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as ex:
            raise StateError(f"cannot open state in {self.dir}: {ex}") from ex
        if db_name == DB_NAME:
            self.ensure("core", CORE_MIGRATIONS)

    def _enable_wal(self) -> None:
        """Switch to WAL once (it persists in the file).

        Changing the journal mode needs an exclusive lock and SQLite does not
        wait for it (no busy handler), so a fresh database opened by several
        processes at once retries here instead of failing.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if self.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                    return
                self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as ex:
                if "locked" not in str(ex) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        self.db.conn.close()

    # -- schema ------------------------------------------------------------

    def ensure(self, namespace: str, migrations: Sequence[Migration]) -> None:
        """Bring `namespace`'s tables up to date; safe from several processes."""
        with self.transaction():
            if "_migrations" not in self.db.table_names():
                self.db["_migrations"].create(
                    {"namespace": str, "version": int}, pk="namespace"
                )
            row = self.db.execute(
                "SELECT version FROM _migrations WHERE namespace = ?", [namespace]
            ).fetchone()
            done = row[0] if row else 0
            if done > len(migrations):
                raise StateError(
                    f"state in {self.dir} was written by a newer herd "
                    f"({namespace} schema v{done}); upgrade herd"
                )
            for migration in migrations[done:]:
                migration(self.db)
            if len(migrations) != done:
                self.db["_migrations"].upsert(
                    {"namespace": namespace, "version": len(migrations)},
                    pk="namespace",
                )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """BEGIN IMMEDIATE: one writer at a time, others wait up to the busy timeout."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as ex:
            raise StateError(f"state store {self.dir} is busy: {ex}") from ex
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk does that, and
            # a failed COMMIT can leave the transaction open): end it either
            # way, so the connection stays usable for the next attempt.
            if self.db.conn.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # -- audit -------------------------------------------------------------

    def audit(
        self,
        action: str,
        detail: dict[str, Any] | None = None,
        *,
        revision: int | None = None,
        user: str | None = None,
    ) -> None:
        """Append one audit row, linked into the hash chain. Never put prompts or
        response text in `detail`. Joins the caller's transaction if one is open."""
        fields = {
            "time": now_iso(),
            "user": user or current_user(),
            "action": action,
            "revision": revision,
            "detail": detail or {},
        }
        if self.db.conn.in_transaction:
            auditlog.append(self.db, **fields)
            return
        with self.transaction():
            auditlog.append(self.db, **fields)

    def audit_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` audit rows, newest first."""
        return list(
            self.db.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", [limit])
        )

    def prune_audit(self, retention_days: int) -> int:
        """Drop audit rows older than the retention period from the start of the
        chain (never the newest row), anchoring the first kept row so the chain
        still verifies; the pruning itself is audited. Returns rows removed."""
        cutoff = (
            (dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days))
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z")
        )
        user = current_user()
        with self.transaction():
            pruned = auditlog.prune(self.db, cutoff, time=now_iso(), user=user)
            if pruned:
                anchor = auditlog.anchor(self.db)
                assert anchor is not None
                self.audit(
                    "audit.prune",
                    {
                        "pruned": pruned,
                        "retention_days": retention_days,
                        "first_id": anchor.first_id,
                        "anchor": anchor.prev_hash,
                    },
                    user=user,
                )
        return pruned

    # -- revisions ---------------------------------------------------------

    def head(self) -> Revision | None:
        """The newest revision (None before the first apply), checked intact."""
        head = self._head()
        return head.verified(self.dir / DB_NAME) if head else None

    def _head(self) -> Revision | None:
        row = self.db.execute(
            "SELECT * FROM revisions ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return self._revision(row)

    def revision(self, rev: int) -> Revision:
        """Revision `rev`, checked intact (StateError if absent or altered)."""
        row = self.db.execute("SELECT * FROM revisions WHERE id = ?", [rev]).fetchone()
        found = self._revision(row)
        if found is None:
            raise StateError(f"no revision {rev} (see `herd history`)")
        return found.verified(self.dir / DB_NAME)

    def revisions(self) -> list[Revision]:
        """Every revision, oldest first, unchecked (see `Revision.intact`)."""
        rows = self.db.execute("SELECT * FROM revisions ORDER BY id").fetchall()
        return [r for r in (self._revision(row) for row in rows) if r]

    def _revision(self, row: tuple | None) -> Revision | None:
        if row is None:
            return None
        cols = [
            d[0] for d in self.db.execute("SELECT * FROM revisions LIMIT 0").description
        ]
        return Revision.from_row(dict(zip(cols, row, strict=True)))

    def pointer_lock(self) -> contextlib.AbstractContextManager[Any]:
        """Hold `STATE_DIR/herd.lock`: the only way to move the pointer."""
        return state_lock(self.dir, BUSY_TIMEOUT_S)

    def record(
        self,
        manifest: bytes,
        *,
        expected_head: int | None,
        summary: str,
        source: str,
        base_dir: str,
        action: str = "apply",
        rollback_of: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Revision | None:
        """Record a new revision if `manifest` differs from the head.

        `expected_head` is the revision the plan was made against: if another
        apply landed in between, refuse rather than silently overwrite it.
        Returns None when the manifest is identical to the head (nothing to do).
        """
        digest = sha256_hex(manifest)
        user = current_user()
        with self.pointer_lock():
            with self.transaction():
                head = self.head()
                head_id = head.id if head else None
                if head_id != expected_head:
                    raise StateError(
                        f"revision {head_id} was applied while this plan was made "
                        f"against {expected_head}; run the command again to re-plan"
                    )
                if head is not None and head.sha256 == digest:
                    return None
                row_id = (
                    self.db["revisions"]
                    .insert(
                        {
                            "created": now_iso(),
                            "user": user,
                            "action": action,
                            "sha256": digest,
                            "summary": summary,
                            "source": source,
                            "base_dir": base_dir,
                            "rollback_of": rollback_of,
                            "manifest": manifest,
                        }
                    )
                    .last_pk
                )
                self.audit(
                    action,
                    {
                        "summary": summary,
                        "sha256": digest,
                        "source": source,
                        **(detail or {}),
                    },
                    revision=row_id,
                    user=user,
                )
                rev = self.revision(row_id)
            # After the commit, so a router never serves an unrecorded revision;
            # under the lock, so no other apply can write its (older) pointer
            # after this one. A crash in between leaves the pointer behind the
            # database; the next apply, rollback or serve repairs it
            # (`sync_pointer`).
            self._write_pointer(rev)
        return rev

    # -- the current pointer -----------------------------------------------

    @property
    def pointer_path(self) -> Path:
        return self.dir / POINTER_NAME

    def _write_pointer(self, rev: Revision) -> None:
        manifest = rev.manifest.decode("utf-8")
        write_pointer(self.dir, Pointer(rev.id, rev.sha256, rev.base_dir, manifest))

    def sync_pointer(self) -> str | None:
        """Make `current.json` match the head revision.

        Repairs a pointer left behind by a crashed apply, and a missing,
        truncated or otherwise unreadable one. Returns what was repaired (one
        line), or None when the pointer was already right.
        """
        if self._pointer_problem(self._head()) is None:
            return None
        with self.pointer_lock():
            head = self._head()
            problem = self._pointer_problem(head)
            if head is None or problem is None:
                return None
            head.verified(self.dir / DB_NAME)
            self._write_pointer(head)
        return f"repaired {self.pointer_path}: {problem}; now revision {head.id}"

    def _pointer_problem(self, head: Revision | None) -> str | None:
        """Why the pointer does not name `head` (None when it does)."""
        if head is None:
            return None
        try:
            current = read_pointer(self.dir)
        except StateError as ex:
            return f"it was unreadable ({ex})"
        if current is None:
            return "it was missing"
        if current.revision != head.id or current.sha256 != head.sha256:
            return f"it named revision {current.revision}, the head is {head.id}"
        return None
