"""A request never waits on SQLite: the trace writer works off the event loop.

SQLite waits up to the store's busy timeout (30 s) for a write lock another
process holds (another worker's flush, `herd traces`, a backup), sleeping in C.
Run on the worker's event loop, that wait froze every request. Here the test
itself holds traces.db's write lock while requests go through a real router.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from contextlib import closing

from herd.router.observe import traces
from tests.router.routerproc import manifest

#: Far below the 30 s busy timeout: a request frozen behind it fails.
CLIENT_TIMEOUT_S = 15


def _chat(url: str) -> int:
    body = json.dumps(
        {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "x"}],
         "stream": False}
    )  # fmt: skip
    req = urllib.request.Request(
        url + "/api/chat",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT_S) as reply:
        reply.read()
        return reply.status


def test_requests_are_answered_while_traces_db_is_locked(sims, router):
    r = router(manifest([sims("node-a")]))
    r.wait_nodes_up(1)
    assert _chat(r.url) == 200
    deadline = time.monotonic() + 20
    while r.get("/fleet/status")[1]["traces"]["written"] == 0:
        assert time.monotonic() < deadline, "no trace was ever written"
        time.sleep(0.1)
    db_path = r.state_dir / traces.DB_NAME
    with closing(sqlite3.connect(db_path, isolation_level=None, timeout=10)) as db:
        db.execute("BEGIN IMMEDIATE")  # the write lock, held by this test
        try:
            assert _chat(r.url) == 200  # its trace row waits for the lock
            # Two flush periods: the writer is now waiting for the lock.
            time.sleep(2 * traces.FLUSH_S + 0.5)
            for _ in range(5):
                assert _chat(r.url) == 200
            status = r.get("/fleet/status", timeout=CLIENT_TIMEOUT_S)[1]["traces"]
            assert status["pending"] >= 6 and not status["write_error"]
        finally:
            db.execute("ROLLBACK")
    # The lock is gone: every row is written, none was lost.
    deadline = time.monotonic() + 20
    while (status := r.get("/fleet/status")[1]["traces"])["pending"]:
        assert time.monotonic() < deadline, f"traces not written: {status}"
        time.sleep(0.2)
    assert status["dropped"] == 0 and status["write_failures"] == 0


def test_the_access_log_never_blocks_the_event_loop():
    """A stderr nobody reads (journald stuck, a full pipe) blocks the write of
    the access lines; the event loop (every request) must keep running."""
    import fcntl
    import os
    import threading

    import gevent

    from herd.router.observe.accesslog import FLUSH_S, AccessLog

    read_end, write_end = os.pipe()
    flags = fcntl.fcntl(write_end, fcntl.F_GETFL)
    fcntl.fcntl(write_end, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:  # fill the pipe: bounded by its capacity
            os.write(write_end, b"x" * 65536)
    except BlockingIOError:
        pass
    fcntl.fcntl(write_end, fcntl.F_SETFL, flags)  # blocking again, and full
    events: list[str] = []
    loop_ran = threading.Event()

    def drain() -> None:
        loop_ran.wait(10)  # on a blocked loop, this gives up after 10 s
        events.append("pipe drained")
        os.set_blocking(read_end, False)
        try:
            while os.read(read_end, 1 << 20):
                pass
        except BlockingIOError:
            pass

    drainer = threading.Thread(target=drain)
    drainer.start()
    stream = os.fdopen(write_end, "w")
    access = AccessLog(stream)
    stop = False
    writer = gevent.spawn(access.run, lambda: stop)
    try:
        access._lines.append("one access line\n")
        gevent.sleep(3 * FLUSH_S)  # the writer is stuck on the full pipe by now
        events.append("loop ran")
        loop_ran.set()
    finally:
        drainer.join(15)
        stop = True
        writer.join(5)
        stream.close()
        os.close(read_end)
    assert events[:2] == ["loop ran", "pipe drained"]
