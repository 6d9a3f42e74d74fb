"""The state store: migrations, revisions, audit, the atomic current pointer."""

from __future__ import annotations

import json

import pytest

from herd.errors import StateError
from herd.store import Store, read_pointer


def test_record_writes_revision_audit_and_pointer(tmp_path):
    store = Store(tmp_path)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rev = store.record(
        b"a: 1\n", expected_head=None, summary="s", source="f", base_dir="/x"
    )
    assert rev.id == 1 and rev.manifest == b"a: 1\n"
    pointer = read_pointer(tmp_path)
    assert (pointer.revision, pointer.manifest, pointer.base_dir) == (1, "a: 1\n", "/x")
    assert store.audit_rows()[0]["action"] == "apply"
    # Identical bytes: nothing recorded.
    assert (
        store.record(b"a: 1\n", expected_head=1, summary="s", source="f", base_dir="/x")
        is None
    )
    assert len(store.revisions()) == 1


def test_stale_plan_is_refused(tmp_path):
    store = Store(tmp_path)
    store.record(b"a: 1\n", expected_head=None, summary="", source="", base_dir="")
    with pytest.raises(StateError, match="re-plan"):
        store.record(b"a: 2\n", expected_head=None, summary="", source="", base_dir="")


def test_pointer_repair_and_tamper_detection(tmp_path):
    store = Store(tmp_path)
    store.record(b"a: 1\n", expected_head=None, summary="", source="", base_dir="")
    store.pointer_path.unlink()
    store.sync_pointer()
    assert read_pointer(tmp_path).revision == 1
    raw = json.loads(store.pointer_path.read_text())
    raw["manifest"] = "a: 666\n"
    store.pointer_path.write_text(json.dumps(raw))
    with pytest.raises(StateError, match="sha256"):
        read_pointer(tmp_path)


def test_namespaces_migrate_independently_and_refuse_newer(tmp_path):
    calls = []

    def m1(db):
        calls.append(1)
        db["things"].create({"id": int}, pk="id")

    store = Store(tmp_path)
    store.ensure("things", [m1])
    store.ensure("things", [m1])
    assert calls == [1]
    with pytest.raises(StateError, match="newer herd"):
        store.ensure("things", [])


def test_missing_state_is_a_clear_error(tmp_path):
    with pytest.raises(StateError, match="herd apply"):
        Store(tmp_path / "nothing", create=False)
