"""One trace row per request, written in batches off the request path.

A request appends a `Trace` (numbers and names only: never prompt or response
text) to an in-memory buffer; every `FLUSH_S` a native writer thread (see
`TraceLog.run`) writes the buffer to `STATE_DIR/traces.db` in transactions of
up to BATCH_MAX rows, and prunes rows older than `audit.retention_days`: no
request ever waits on SQLite. The buffer is bounded: if the disk stalls, the
oldest unwritten traces are dropped and counted rather than growing memory.
A batch whose write fails (disk full, I/O error) goes back to the front of the
buffer and is retried on the next flush, so every recorded trace is always
exactly one of `written`, `pending` or `dropped`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import sqlite_utils

from herd.router.observe import rollup
from herd.router.observe.logfield import logged_all
from herd.store import Store

log = logging.getLogger("herd.router")

DB_NAME = "traces.db"
FLUSH_S = 1.0
PRUNE_S = 3600.0
BUFFER_MAX = 100_000
#: Rows per transaction. A commit costs ~100 us of CPU whatever its size
#: (the table's and the ts index's last pages written again, the WAL frame
#: headers, taking and leaving the write lock): at 128 rows that was ~0.8 us
#: per request, at 1024 it is ~0.1.
BATCH_MAX = 1024
#: The writer's pause between two transactions of one flush, and between two
#: slices (SLICE_ROWS) of one: the writer thread shares the worker's core,
#: and holds the GIL while it binds a slice's values, so a second of rows in
#: one burst (~16 ms of CPU at c=1) would make the requests arriving meanwhile
#: wait. A slice with a pause after it is a few hundred microseconds.
PAUSE_S = 0.001
#: Rows per INSERT statement (a power of two: see `_insert_rows`); `between()`
#: runs between two of them (on the writer thread a native sleep: the
#: transaction stays open, the loop runs).
SLICE_ROWS = 64


class Trace(NamedTuple):
    """One request's trace row (a tuple: cheap to build, written as-is)."""

    ts: float
    client: str | None
    route: str
    method: str
    requested_model: str | None
    served_model: str | None
    node: str | None
    status: int
    queue_ms: float | None
    ttft_ms: float | None
    duration_ms: float
    tokens_in: int | None
    tokens_out: int | None
    retries: int
    error_class: str | None
    #: The caller's address, normalized (herd.router.http.peer).
    peer: str | None = None
    #: The request's tags, comma-joined (herd.router.observe.tags).
    tags: str | None = None


COLUMNS = Trace._fields


def row(outcome: Any, now: float) -> Trace:
    """The trace row of a finished request (herd.router.routing.forward's
    `Outcome`, `now` on its monotonic clock); every text field escaped and
    bounded (herd.router.observe.logfield). Built positionally: a keyword call
    of the NamedTuple costs as much again as the escaping."""
    o = outcome
    client, route, method, requested, served, node, error, peer = logged_all(
        (
            o.client,
            o.route,
            o.method,
            o.requested_model,
            o.served_model,
            o.node,
            o.error_class,
            o.peer,
        )
    )
    return _new_row(
        Trace,
        (
            o.t0,
            client,
            route,
            method,
            requested,
            served,
            node,
            o.status,
            o.queue_ms,
            o.ttft_ms,
            round((now - o.started) * 1000.0, 3),
            o.tokens_in,
            o.tokens_out,
            o.retries,
            error,
            peer,
            o.tags,
        ),
    )


_new_row = tuple.__new__


def _m1_traces(db: sqlite_utils.Database) -> None:
    db["traces"].create(
        {
            "id": int,
            "time": str,
            "ts": float,
            "client": str,
            "route": str,
            "method": str,
            "requested_model": str,
            "served_model": str,
            "node": str,
            "status": int,
            "queue_ms": float,
            "ttft_ms": float,
            "duration_ms": float,
            "tokens_in": int,
            "tokens_out": int,
            "retries": int,
            "error_class": str,
        },
        pk="id",
    )
    db["traces"].create_index(["ts"])


def _m2_peer(db: sqlite_utils.Database) -> None:
    db["traces"].add_column("peer", str)


def _m3_tags(db: sqlite_utils.Database) -> None:
    """The request's tags (herd.router.observe.tags); safe on a table that has them."""
    if "tags" not in db["traces"].columns_dict:
        db["traces"].add_column("tags", str)


def _m4_rollup(db: sqlite_utils.Database) -> None:
    """The traffic rollup's tables (herd.router.observe.rollup)."""
    rollup.create(db.conn)


MIGRATIONS = (_m1_traces, _m2_peer, _m3_tags, _m4_rollup)

# SQLite formats `time` from `ts` (the first value), off the Python side.
_INSERT = (
    f"INSERT INTO traces (time, {', '.join(COLUMNS)}) "
    f"VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', ?1, 'unixepoch'), "
    f"{', '.join(f'?{i + 1}' for i in range(len(COLUMNS)))})"
)


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """(True, fn(*args)), or (False, the exception it raised)."""
    try:
        return True, fn(*args)
    except Exception as ex:  # noqa: BLE001 - re-raised by the caller
        return False, ex


_WIDTH = len(COLUMNS)
_INSERTS: dict[int, str] = {}


def _insert_rows(count: int) -> str:
    """One INSERT of `count` rows (parameters row after row).

    Rows go in one statement, not `executemany`'s one per row: `sqlite3` takes
    the GIL back after every statement it runs, and on the writer thread each
    of those waits for the event loop to let go of it (a context switch and
    more CPU per request than the insert itself).

    `count` is a power of two (SLICE_ROWS, or a part of a flush's last, shorter
    slice), so there are only a few such statements and `sqlite3`
    keeps each compiled in its statement cache. With one statement per row
    count, a flush's last slice compiled an INSERT of its own count (millions
    of instructions for tens of rows of numbered parameters, each looked up in
    a list of them) until the cache held all 64 counts: in a new worker, once
    a flush, for minutes; and 64 large compiled statements held for good."""
    sql = _INSERTS.get(count)
    if sql is None:
        values = ", ".join(
            f"(strftime('%Y-%m-%dT%H:%M:%fZ', ?{base + 1}, 'unixepoch'), "
            + ", ".join(f"?{base + i + 1}" for i in range(_WIDTH))
            + ")"
            for base in range(0, count * _WIDTH, _WIDTH)
        )
        sql = _INSERTS[count] = (
            f"INSERT INTO traces (time, {', '.join(COLUMNS)}) VALUES {values}"
        )
    return sql


#: What a None is bound as: SQLite stores a NaN as NULL, and `sqlite3` binds
#: a float at once, whereas a None first goes through its adapter lookup
#: (~0.4 us each: a second of a row's binding, for its 2-4 empty columns).
_NULL = float("nan")

#: Errors that come from a row's values, not from the disk: retrying won't help.
_UNWRITABLE_ROW = (ValueError, OverflowError, sqlite3.ProgrammingError)


class TraceLog:
    """The buffer and its writer. `record` is O(1) and never touches the disk."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None,
        *,
        retention_days: Callable[[], int] = lambda: 90,
        clock: Callable[[], float] = time.time,
    ):
        self._state_dir = state_dir
        self._retention_days = retention_days
        self._clock = clock
        self._buffer: deque[Trace] = deque(maxlen=BUFFER_MAX)
        self._store: Store | None = None
        self.written = 0
        self.dropped = 0
        #: Flushes that failed, and the error of the last one while it lasts.
        self.write_failures = 0
        self.write_error: str | None = None
        self._last_prune = float("-inf")
        #: Rows taken from the buffer by the flush under way.
        self._writing = 0

    def record(self, trace: Trace) -> None:
        if len(self._buffer) == BUFFER_MAX:
            self.dropped += 1
        self._buffer.append(trace)

    @property
    def pending(self) -> int:
        """Rows not written yet: buffered, or in the transaction being written."""
        return len(self._buffer) + self._writing

    def _db(self) -> Store | None:
        if self._store is None and self._state_dir is not None:
            store = Store(self._state_dir, db_name=DB_NAME)
            try:
                store.ensure("traces", MIGRATIONS)
            except BaseException:
                store.close()
                raise
            self._store = store
        return self._store

    def flush(
        self,
        limit: int | None = None,
        between: Callable[[], Any] | None = None,
        write: Callable[..., Any] | None = None,
    ) -> int:
        """Write buffered traces (at most `limit`) in one transaction; returns
        how many. With `between`, rows go in slices of SLICE_ROWS and
        `between()` (a pause for the event loop) runs between slices.

        `write(fn, *args)` runs the SQLite work (`run` passes the writer
        thread's); the batch is taken and accounted for here, by the caller,
        so `written`, `pending` and `dropped` only change on its thread: rows
        being written count as pending until the write is done."""
        if not self._buffer:
            return 0
        if self._state_dir is None:
            return 0
        take = len(self._buffer) if limit is None else min(limit, len(self._buffer))
        popleft = self._buffer.popleft
        batch = [popleft() for _ in range(take)]
        self._writing = len(batch)
        try:
            if write is None:
                bad = self._write(batch, between)
            else:
                bad = write(self._write, batch, between)
        except BaseException as ex:
            self._writing = 0
            self._requeue(batch)
            if isinstance(ex, Exception):  # not a greenlet kill or Ctrl-C
                self._failed(ex)
            raise
        self._writing = 0
        if bad:
            log.error("dropped %d trace rows with values SQLite cannot store", bad)
        self.dropped += bad
        self._wrote(len(batch) - bad)
        return len(batch)

    def _write(self, batch: list[Trace], between: Callable[[], Any] | None) -> int:
        """Insert `batch` in one transaction; returns how many rows were bad."""
        store = self._db()
        assert store is not None
        try:
            with store.transaction() as db:
                execute = db.conn.execute
                start, total = 0, len(batch)
                while start < total:
                    if start and start % SLICE_ROWS == 0 and between is not None:
                        between()
                    # SLICE_ROWS rows, or the largest power of two left: a
                    # flush's last, shorter slice goes in 32, 16, ... 1 rows
                    # (see _insert_rows).
                    size = min(SLICE_ROWS, 1 << ((total - start).bit_length() - 1))
                    rows = batch[start : start + size]
                    execute(
                        _insert_rows(size),
                        [_NULL if v is None else v for row in rows for v in row],
                    )
                    start += size
        except _UNWRITABLE_ROW:
            # A row SQLite cannot take (a value no column type holds): write
            # the batch row by row, dropping and counting only the bad rows,
            # so one poison row never blocks the buffer.
            return self._write_each(store, batch)
        return 0

    def _wrote(self, count: int) -> None:
        self.written += count
        if self.write_error is not None:
            log.warning("writing traces works again (%d pending)", self.pending)
            self.write_error = None

    @staticmethod
    def _write_each(store: Store, batch: list[Trace]) -> int:
        """Write `batch` row by row in one transaction, skipping bad rows;
        returns how many were bad."""
        bad = 0
        with store.transaction() as db:
            for row in batch:
                try:
                    db.conn.execute(_INSERT, row)
                except _UNWRITABLE_ROW:
                    bad += 1
        return bad

    def _requeue(self, batch: list[Trace]) -> None:
        """Put an unwritten batch back in front of what arrived meanwhile;
        what no longer fits is dropped (the oldest first) and counted."""
        room = BUFFER_MAX - len(self._buffer)
        lost = max(0, len(batch) - room)
        self.dropped += lost
        self._buffer.extendleft(reversed(batch[lost:]))

    def _failed(self, ex: BaseException) -> None:
        self.write_failures += 1
        error = f"{type(ex).__name__}: {ex}"
        if error != self.write_error:  # once per distinct error, not every second
            log.error(
                "writing traces failed, %d kept for retry: %s", self.pending, error
            )
        self.write_error = error

    def prune(self) -> int:
        """Delete traces older than the retention period; returns how many.

        Whole quarter hours go, of the traces and of their rollup alike
        (herd.router.observe.rollup.prune), so the rollup never counts a trace
        that is gone, nor misses one kept."""
        store = self._db()
        if store is None:
            return 0
        cutoff = self._clock() - self._retention_days() * 86400.0
        with store.transaction() as db:
            count = rollup.prune(db.conn.execute, cutoff)
        self._last_prune = time.monotonic()
        return count

    def run(self, stopped: Callable[[], bool]) -> None:
        """Flush every FLUSH_S and prune every PRUNE_S until `stopped()`.

        The writing happens on a native thread of its own (a one-thread
        gevent ThreadPool; this greenlet only waits for it), never on the
        worker's event loop. Inserts are cheap, but a commit can wait for
        another worker's write lock (busy timeout), and every ~1000 pages
        SQLite checkpoints the WAL, which fsyncs the database: tens of
        milliseconds on a busy disk. On the event loop, every request arriving
        meanwhile waited too (the p99 of a lone client was 14 ms). `sqlite3`
        releases the GIL inside SQLite (each row's step, the commit, the
        checkpoint), so the loop keeps serving; the thread needs the GIL only
        to bind each row's values, a few microseconds per request. (A writer
        process would take the binding off the worker too, but the rows would
        then be pickled through a pipe, costing about as much, and the
        written/pending/dropped accounting would span two processes.)
        One thread, always the same one: the SQLite connection is opened,
        used and closed there.
        """
        import gevent
        from gevent.monkey import get_original
        from gevent.threadpool import ThreadPool

        pool = ThreadPool(1)
        # The pause between two slices, on the writer thread: a native sleep
        # (gevent's, where monkey-patched in, would start a hub on the thread).
        native_sleep = get_original("time", "sleep")

        def on_thread(fn: Callable[..., Any], *args: Any) -> Any:
            # An exception is carried back and raised here: raised in the
            # pool, gevent would also print its traceback to stderr.
            ok, value = pool.apply(_outcome, (fn, *args))
            if not ok:
                raise value
            return value

        try:
            while not stopped():
                gevent.sleep(FLUSH_S)
                self.tick(
                    pause=lambda: gevent.sleep(PAUSE_S),
                    between=lambda: native_sleep(PAUSE_S),
                    write=on_thread,
                )
            pool.apply(_outcome, (self.close,))
        finally:
            pool.kill()

    def tick(
        self,
        pause: Callable[[], Any] | None = None,
        between: Callable[[], Any] | None = None,
        write: Callable[..., Any] | None = None,
    ) -> None:
        """Flush everything (`pause()` between transactions, `between()`
        between slices of one, `write` as in `flush`), and prune when PRUNE_S
        has passed."""
        try:
            while self.flush(BATCH_MAX, between, write) == BATCH_MAX:
                if pause is not None:
                    pause()
        except Exception:  # noqa: BLE001 - tracing must never take the router down
            return  # logged by flush; the batch waits in the buffer for the next tick
        try:
            if time.monotonic() - self._last_prune >= PRUNE_S:
                if write is None:
                    self.prune()
                else:
                    write(self.prune)
        except Exception:  # noqa: BLE001
            log.exception("pruning traces failed")

    def close(self) -> None:
        """Write what is buffered and close the database; what cannot be
        written now is counted as dropped (nothing is left to retry it)."""
        self.tick()
        if self._buffer:
            log.error("%d traces could not be written at exit", self.pending)
            self.dropped += len(self._buffer)
            self._buffer.clear()
        if self._store is not None:
            store, self._store = self._store, None
            try:
                store.close()
            except sqlite3.ProgrammingError:
                pass  # opened by the writer thread, which is gone (worker exit)
