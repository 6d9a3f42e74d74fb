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
