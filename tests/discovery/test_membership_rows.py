"""Member rows in discovery.db (what other workers and `herd plan` read) are
rewritten when a node's models, version or URL change, and otherwise at most
every ROW_REFRESH_S: a beat that only brings new metrics costs no write."""

from __future__ import annotations

import json
import sqlite3

import pytest

from herd.discovery.heartbeat import parse
from herd.discovery.member import Member
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
        assert not hb.partial or members.holds(hb, "127.0.0.1")
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
    assert stored(path)[0] == now[0]
    # What another worker reads back: the whole inventory and the new metrics.
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT * FROM members").fetchone()
    back = Member.from_row(row)
    assert [m["name"] for m in back.models] == ["m:2"]
    assert back.metrics == {"cpu": 4} and back.inventory == "bb" * 8
    members.close()


def test_a_row_for_a_light_beat_carries_the_whole_inventory_as_received(tmp_path):
    path = tmp_path / "discovery.db"
    members = Membership(path, shared=True)
    whole = (
        b'{"name":"gpu-s","url":"%s","inventory":"%s","version":"0.9",'
        % (
            URL.encode(),
            b"cc" * 8,
        )
        + b'"models":[{"name":"m:3"}],"metrics":{"cpu":1}}'
    )
    light = b'{"name":"gpu-s","url":"%s","inventory":"%s","metrics":{"cpu":9}}' % (
        URL.encode(),
        b"cc" * 8,
    )
    for raw in (whole, light):
        hb = parse(json.loads(raw))
        assert not hb.partial or members.holds(hb, "127.0.0.1")
        assert members.beat(hb, "127.0.0.1", None, "agent", raw=raw) is not None
        members._written.clear()  # (write every beat here)
    members.flush()
    with sqlite3.connect(path) as db:
        back = Member.from_row(db.execute("SELECT * FROM members").fetchone())
    assert back.version == "0.9" and [m["name"] for m in back.models] == ["m:3"]
    assert back.metrics == {"cpu": 9}
    members.close()


def test_a_light_beat_takes_the_inventory_of_the_member_that_holds_it():
    members = Membership()
    inventory = {"inventory": "dd" * 8, "version": "0.9"}
    whole = parse(
        {"name": "gpu-t", "url": URL, **inventory, "models": [{"name": "m:4"}]}
    )
    members.beat(whole, "127.0.0.1", None, "agent")
    light = parse(
        {"name": "gpu-t", "url": URL, "inventory": "dd" * 8, "metrics": {"c": 2}}
    )
    assert light.partial and light.models == () and light.version is None
    assert members.holds(light, "127.0.0.1")
    member = members.beat(light, "127.0.0.1", None, "agent")
    assert member is not None and member.version == "0.9"
    assert member.models == whole.models and member.metrics == {"c": 2}
    # Not from the address holding it, or naming another inventory: the agent
    # is asked to resend all, and `beat` will not record it without the models.
    other = parse({"name": "gpu-t", "url": URL, "inventory": "ee" * 8})
    for hb, address in ((light, "127.0.0.2"), (other, "127.0.0.1")):
        assert not members.holds(hb, address)
        with pytest.raises(ValueError, match="inventory not held"):
            members.beat(hb, address, None, "agent")
    assert members.members["gpu-t"] is member
