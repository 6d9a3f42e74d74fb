"""Member rows in discovery.db (what other workers and `herd plan` read) are
rewritten when a node's models, version or URL change, and otherwise at most
every ROW_REFRESH_S: a beat that only brings new metrics costs no write."""

from __future__ import annotations

import sqlite3

from herd.discovery.heartbeat import parse
from herd.discovery.membership import ROW_REFRESH_S, Membership

URL = "http://127.0.0.1:11434"


def stored(path) -> tuple:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT last_seen, doc FROM members").fetchone()


def test_rows_are_written_on_change_or_when_old(tmp_path):
    now = [1000.0]
    path = tmp_path / "discovery.db"
    members = Membership(path, clock=lambda: now[0], shared=True)
    members.timeout_s = 60

    def beat(**doc) -> None:
        hb = parse({"name": "gpu-r", "url": URL, **doc})
        if hb.partial:
            hb = members.complete(hb, "127.0.0.1")
        assert members.beat(hb, "127.0.0.1", None, "agent") is not None
        members.flush()

    beat(inventory="aa" * 8, models=[{"name": "m:1"}], metrics={"cpu": 1})
    assert stored(path)[0] == 1000.0
    now[0] += 1
    beat(inventory="aa" * 8, metrics={"cpu": 2})  # only metrics: no write
    assert stored(path)[0] == 1000.0
    assert members.members["gpu-r"].metrics == {"cpu": 2}  # (this worker knows)
    now[0] += 1
    beat(inventory="bb" * 8, models=[{"name": "m:2"}], metrics={"cpu": 3})
    assert stored(path)[0] == 1002.0 and '"m:2"' in stored(path)[1]
    now[0] += ROW_REFRESH_S
    beat(inventory="bb" * 8, metrics={"cpu": 4})  # old row: refreshed, whole
    last_seen, doc = stored(path)
    assert last_seen == now[0] and '"m:2"' in doc and '"cpu": 4' in doc
    members.close()
