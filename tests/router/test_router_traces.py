"""Trace accounting when the disk refuses writes: every recorded trace is
written, pending (kept for retry) or dropped (counted), never silently lost."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from herd.router.observe import traces
from herd.router.observe.traces import Trace, TraceLog
from tests.router.routerproc import ROOT, Router, apply, free_port, manifest


def _trace(i: int) -> Trace:
    now = time.time() + i
    return Trace(now, "g", "/api/chat", "POST", "m", "m", "n", 200, 1.0, 2.0, 3.0,
                 4, 5, 0, None)  # fmt: skip


def _accounted(log: TraceLog) -> int:
    return log.written + log.dropped + log.pending


def _fill_disk(log: TraceLog) -> None:
    """Make traces.db 'full' for real: SQLite refuses to grow it (SQLITE_FULL)."""
    db = log._store.db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_disk_keeps_traces_for_retry(tmp_path):
    log = TraceLog(tmp_path)
    sent = 0
    for i in range(10):
        log.record(_trace(i))
        sent += 1
    log.tick()
    assert log.written == 10
    _fill_disk(log)
    for i in range(3000):
        log.record(_trace(i))
        sent += 1
    log.tick()
    log.tick()
    assert log.written < sent
    assert _accounted(log) == sent
    assert log.write_failures >= 1 and "full" in log.write_error
    # Space again: the kept rows are written, none twice.
    log._store.db.execute("PRAGMA max_page_count = 1073741823")
    log.tick()
    assert (log.written, log.pending, log.dropped) == (sent, 0, 0)
    assert log.write_error is None
    log.close()
    db = sqlite3.connect(tmp_path / traces.DB_NAME)
    assert db.execute("SELECT count(*) FROM traces").fetchone()[0] == sent


def test_a_full_disk_overflows_the_bounded_buffer_as_counted_drops(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(traces, "BUFFER_MAX", 1000)
    log = TraceLog(tmp_path)
    log.record(_trace(0))
    log.tick()
    _fill_disk(log)
    sent = 1
    for i in range(2500):
        log.record(_trace(i))
        sent += 1
        if i % 400 == 0:
            log.tick()  # fails: the batch goes back into the full buffer
    assert log.pending == 1000 and log.dropped >= 1000
    assert _accounted(log) == sent
    log.close()  # still full: what is left is counted as dropped at exit
    assert (log.pending, log.dropped + log.written) == (0, sent)


def test_a_row_sqlite_cannot_store_is_dropped_alone_and_counted(tmp_path):
    """A lone surrogate in a model name, a node's absurd token count: the rest
    of the batch is written, the bad rows are counted as dropped."""
    log = TraceLog(tmp_path)
    sent = 0
    for i in range(300):
        row = _trace(i)
        if i % 100 == 7:
            row = row._replace(requested_model="bad\ud800name")
        if i % 100 == 9:
            row = row._replace(tokens_out=2**70)
        if i % 100 == 11:
            row = row._replace(tokens_in={"n": 1})
        log.record(row)
        sent += 1
    log.tick()
    assert (log.written, log.dropped, log.pending) == (sent - 9, 9, 0)
    log.tick()  # nothing stuck behind them
    assert _accounted(log) == sent
    log.close()


def test_empty_columns_are_written_as_null(tmp_path):
    """None values reach SQLite as NULL (bound as NaN, which SQLite stores as
    NULL), whatever the column's type; present values are kept as they are."""
    log = TraceLog(tmp_path)
    log.record(_trace(0)._replace(ttft_ms=None, tokens_in=None, served_model=None))
    log.record(_trace(1)._replace(error_class="node_error", tags="a,b"))
    log.tick()
    log.close()
    db = sqlite3.connect(tmp_path / traces.DB_NAME)
    got = db.execute(
        "SELECT typeof(ttft_ms), typeof(tokens_in), typeof(served_model),"
        " typeof(error_class), typeof(tags), typeof(peer), ttft_ms, tokens_in,"
        " error_class, tags FROM traces ORDER BY id"
    ).fetchall()
    assert got == [
        ("null", "null", "null", "null", "null", "null", None, None, None, None),
        ("real", "integer", "text", "text", "text", "null", 2.0, 4, "node_error",
         "a,b"),
    ]  # fmt: skip


def test_a_flush_pauses_between_slices_inside_its_transaction(tmp_path):
    """`between` runs between two INSERTs of SLICE_ROWS rows of one
    transaction (the writer thread's pause), `pause` between transactions."""
    log = TraceLog(tmp_path)
    count = traces.BATCH_MAX + traces.SLICE_ROWS + 1
    for i in range(count):
        log.record(_trace(i))
    seen: list[tuple[str, int]] = []
    log.tick(
        pause=lambda: seen.append(("pause", log.written)),
        between=lambda: seen.append(("between", log.written)),
    )
    slices = traces.BATCH_MAX // traces.SLICE_ROWS
    assert seen == [
        *[("between", 0)] * (slices - 1),
        ("pause", traces.BATCH_MAX),
        ("between", traces.BATCH_MAX),
    ]
    assert (log.written, log.pending) == (count, 0)
    log.close()


def test_a_short_slice_goes_in_power_of_two_statements(tmp_path, monkeypatch):
    """A flush's last slice of fewer than SLICE_ROWS rows is written as
    INSERTs of power-of-two sizes (a handful of statements SQLite keeps
    compiled, not one per row count), every row once and in order."""
    sizes: list[int] = []
    insert_rows = traces._insert_rows

    def recording(count: int) -> str:
        sizes.append(count)
        return insert_rows(count)

    monkeypatch.setattr(traces, "_insert_rows", recording)
    log = TraceLog(tmp_path)
    sent = 0
    for count in (traces.SLICE_ROWS - 1, 1, 37, traces.SLICE_ROWS + 5):
        for _ in range(count):
            trace = _trace(sent)
            log.record(trace._replace(queue_ms=float(sent)))
            sent += 1
        log.tick()
    assert set(sizes) <= {1 << bit for bit in range(7)}
    assert sizes == [32, 16, 8, 4, 2, 1, 1, 32, 4, 1, 64, 4, 1]
    assert (log.written, log.pending) == (sent, 0)
    with closing(sqlite3.connect(tmp_path / traces.DB_NAME)) as db:
        got = [r[0] for r in db.execute("SELECT queue_ms FROM traces ORDER BY id")]
    assert got == [float(i) for i in range(sent)]
    log.close()


# -- through a real router whose worker may not write files any more -----------


def _start_router(state_dir: Path, text: str) -> tuple[Router, list[str]]:
    """`herd serve` with its output on a pipe (the worker's file writes fail)."""
    apply(state_dir, text)
    port = free_port()
    env = {**os.environ, "HERD_STATE_DIR": str(state_dir), "HERD_WORKERS": "1"}
    env["HERD_KEEPALIVE"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "herd", "serve", "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(
            line.decode(errors="replace") for line in proc.stdout
        ),
        daemon=True,
    )
    reader.start()
    return Router(proc, f"http://127.0.0.1:{port}", state_dir, Path("/dev/null")), lines


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:  # the task or the process just ended
                continue
            found += map(int, children)
            todo += map(int, children)
    return found


def _holds(pid: int, path: Path) -> bool:
    try:
        return any(
            os.path.realpath(fd) == str(path)
            for fd in Path(f"/proc/{pid}/fd").iterdir()
        )
    except OSError:  # the process just ended
        return False


def _writer_pid(top: int, db_path: Path) -> int:
    """The process under `top` that holds `db_path` open: the gunicorn worker
    writing traces (`herd serve` runs gunicorn, whose master forks workers)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        holders = [pid for pid in _descendants(top) if _holds(pid, db_path)]
        if len(holders) == 1:
            return holders[0]
        time.sleep(0.1)
    raise AssertionError(f"not one process under {top} has {db_path.name} open")


def _generate(url: str) -> int:
    body = json.dumps({"model": "llama3.2:3b", "prompt": "x", "stream": False})
    req = urllib.request.Request(
        url + "/api/generate",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as reply:
        reply.read()
        return reply.status


def _empty_wal(db_path: Path) -> None:
    """Checkpoint `db_path` and truncate its WAL to 0 bytes, from this process.

    setrlimit(2) describes RLIMIT_FSIZE as refusing writes that *extend* a
    file; Linux refuses any write at an offset past the limit, even inside
    space the file has. After this the next commit (a WAL header and frames
    from offset 0) must grow the WAL, so it fails under either reading.
    """
    wal = Path(f"{db_path}-wal")
    with closing(sqlite3.connect(db_path, timeout=10)) as db:
        for _ in range(50):  # bounded: busy only while a flush is committing
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy and wal.stat().st_size == 0:
                return
            time.sleep(0.1)
    raise AssertionError(f"could not empty {wal.name}: {wal.stat().st_size} bytes")


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit")
def test_router_counts_every_trace_while_its_disk_refuses_writes(sims, tmp_path):
    node = sims("node-a")
    r, output = _start_router(tmp_path / "state", manifest([node]))
    try:
        # Up, with a node, and traces.db open: the first rows are written.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                status = r.get("/fleet/status", timeout=2)[1]
                if status["nodes_up"] == 1 and status["traces"]["written"]:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        # Every request from here on is traced exactly once; a status body
        # counts the requests before it, not itself.
        status = r.get("/fleet/status")[1]["traces"]
        sent = status["written"] + status["dropped"] + status["pending"] + 1
        db_path = (r.state_dir / traces.DB_NAME).resolve()
        worker = _writer_pid(r.proc.pid, db_path)
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG.
        # Only the soft limit: raising it back needs no privilege.
        before = resource.prlimit(worker, resource.RLIMIT_FSIZE)
        resource.prlimit(worker, resource.RLIMIT_FSIZE, (1, before[1]))
        # Empty the WAL: the worker's every commit from now on must grow it.
        # No write goes through after this: `written` stays where it is.
        _empty_wal(db_path)
        written = r.get("/fleet/status")[1]["traces"]["written"]
        sent += 1
        for _ in range(40):
            assert _generate(r.url) == 200
            sent += 1
        # Let the writer try (and fail) a flush or two.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = r.get("/fleet/status")[1]["traces"]
            sent += 1
            if status["write_failures"]:
                break
            time.sleep(0.3)
        assert status["written"] == written, "a write went through the limit"
        assert status["written"] + status["dropped"] + status["pending"] == sent - 1
        assert status["write_error"]
        metrics = urllib.request.urlopen(r.url + "/metrics", timeout=5).read().decode()
        sent += 1
        # (still failing: the status request itself is pending too)
        assert f"herd_traces_pending {status['pending'] + 1}.0" in metrics
        assert "herd_traces_write_failures_total" in metrics
        # The disk has room again: what was kept is written.
        resource.prlimit(worker, resource.RLIMIT_FSIZE, before)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = r.get("/fleet/status")[1]["traces"]
            sent += 1
            if status["pending"] == 0:
                break
            time.sleep(0.3)
        assert (status["written"], status["dropped"]) == (sent - 1, 0)
        assert status["write_error"] is None
    finally:
        r.stop()
    assert "Traceback" not in "".join(output)
