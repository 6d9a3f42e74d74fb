"""The tamper-evident audit log: chained rows, the migration, pruning with an
anchor, and `herd audit` / `herd audit verify` run as real subprocesses on a
real herd.db that the tests then edit behind herd's back with sqlite3."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import herd.store
from herd.ops.chain import GENESIS, row_hash
from herd.store import Store

ROOT = Path(__file__).resolve().parents[2]


def herd_cli(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HERD_STATE_DIR": str(state)}
    return subprocess.run(
        [sys.executable, "-m", "herd", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def audited(state: Path, count: int, action: str = "test.event") -> None:
    store = Store(state)
    try:
        for i in range(count):
            store.audit(action, {"i": i, "note": "x" * i})
    finally:
        store.close()


def edit(state: Path, sql: str, args: tuple = ()) -> None:
    """Change herd.db the way someone with shell access would: sqlite3, by hand."""
    with sqlite3.connect(state / "herd.db") as db:
        db.execute(sql, args)


def test_rows_are_chained(tmp_path):
    audited(tmp_path, 4)
    with sqlite3.connect(tmp_path / "herd.db") as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM audit ORDER BY id")]
    assert rows[0]["prev_hash"] == GENESIS
    for before, row in zip(rows, rows[1:], strict=False):
        assert row["prev_hash"] == before["hash"]
    for row in rows:
        assert row["hash"] == row_hash(row)
    result = herd_cli(tmp_path, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "audit chain intact: 4 rows (1..4)" in result.stdout
    assert rows[-1]["hash"] in result.stdout


def test_record_still_audits_apply_with_its_revision(tmp_path):
    store = Store(tmp_path)
    rev = store.record(
        b"apiVersion: herd/v1\n", expected_head=None, summary="s", source="f",
        base_dir=str(tmp_path),
    )  # fmt: skip
    [row] = store.audit_rows()
    store.close()
    assert (row["action"], row["revision"]) == ("apply", rev.id)
    assert herd_cli(tmp_path, "audit", "verify").returncode == 0


@pytest.mark.parametrize(
    ("sql", "args", "named", "why"),
    [
        ("UPDATE audit SET detail = ? WHERE id = 3", ('{"i": 99}',), 3, "altered"),
        ("UPDATE audit SET user = 'mallory' WHERE id = 5", (), 5, "altered"),
        ("UPDATE audit SET revision = '7' WHERE id = 2", (), 2, "altered"),
        ("UPDATE audit SET hash = ? WHERE id = 4", ("f" * 64,), 4, "altered"),
        ("DELETE FROM audit WHERE id = 3", (), 4, "row 3 deleted"),
        ("DELETE FROM audit WHERE id IN (3, 4)", (), 5, "rows 3..4 deleted"),
        ("DELETE FROM audit WHERE id <= 2", (), 3, "does not link to the start"),
        (
            "INSERT INTO audit (id, time, user, action, detail) "
            "VALUES (7, '2026-01-01T00:00:00Z', 'x', 'apply', '{}')",
            (), 7, "does not link to row 6",
        ),
    ],
)  # fmt: skip
def test_verify_names_the_first_broken_row(tmp_path, sql, args, named, why):
    audited(tmp_path, 6)
    assert herd_cli(tmp_path, "audit", "verify").returncode == 0
    edit(tmp_path, sql, args)
    result = herd_cli(tmp_path, "audit", "verify")
    assert result.returncode == 1
    assert result.stderr.startswith(f"herd audit verify: audit row {named} breaks")
    assert why in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    verdict = json.loads(herd_cli(tmp_path, "audit", "verify", "--json").stdout)
    assert verdict["intact"] is False and verdict["broken_id"] == named


def test_a_rewritten_row_with_its_hash_recomputed_breaks_the_next_link(tmp_path):
    audited(tmp_path, 5)
    with sqlite3.connect(tmp_path / "herd.db") as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM audit WHERE id = 2").fetchone())
        row["detail"] = '{"i": 1, "note": "forged"}'
        db.execute(
            "UPDATE audit SET detail = ?, hash = ? WHERE id = 2",
            [row["detail"], row_hash(row)],
        )
    result = herd_cli(tmp_path, "audit", "verify")
    assert result.returncode == 1
    assert "audit row 3 breaks the chain: it does not link to row 2" in result.stderr


def _v1_state(state: Path, rows: int) -> None:
    """herd.db as herd wrote it before the chain (core schema v1)."""
    state.mkdir()
    with sqlite3.connect(state / "herd.db") as db:
        db.execute("CREATE TABLE _migrations (namespace TEXT PRIMARY KEY, version INT)")
        db.execute("INSERT INTO _migrations VALUES ('core', 1)")
        db.execute(
            "CREATE TABLE revisions (id INTEGER PRIMARY KEY, created TEXT NOT NULL, "
            "user TEXT NOT NULL, action TEXT NOT NULL, sha256 TEXT NOT NULL, "
            "summary TEXT, source TEXT, base_dir TEXT, rollback_of INTEGER, "
            "manifest BLOB NOT NULL)"
        )
        db.execute(
            "CREATE TABLE audit (id INTEGER PRIMARY KEY, time TEXT NOT NULL, "
            "user TEXT NOT NULL, action TEXT NOT NULL, revision INTEGER, detail TEXT)"
        )
        for i in range(rows):
            db.execute(
                "INSERT INTO audit (time, user, action, revision, detail) "
                "VALUES (?, 'root', 'apply', ?, ?)",
                [f"2026-11-0{i + 1}T10:00:00Z", i + 1, json.dumps({"n": i})],
            )


def test_migration_chains_existing_rows(tmp_path):
    state = tmp_path / "state"
    _v1_state(state, 3)
    result = herd_cli(state, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "3 rows (1..3)" in result.stdout
    audited(state, 1)  # new rows continue the migrated chain
    assert "4 rows (1..4)" in herd_cli(state, "audit", "verify").stdout
    listed = json.loads(
        herd_cli(state, "audit", "--since", "2026-10-01", "--json").stdout
    )
    assert [r["detail"] for r in listed][:3] == [{"n": 0}, {"n": 1}, {"n": 2}]


def _audit_at(state: Path, times: list[str], monkeypatch) -> None:
    stamps = iter(times)
    monkeypatch.setattr(herd.store, "now_iso", lambda: next(stamps))
    store = Store(state)
    try:
        for i in range(len(times)):
            store.audit("test.event", {"i": i})
    finally:
        store.close()
    monkeypatch.undo()


def test_pruning_keeps_the_chain_verifiable(tmp_path, monkeypatch):
    old = [f"2020-01-0{d}T00:00:00Z" for d in range(1, 6)]
    _audit_at(tmp_path, old + ["2099-01-01T00:00:00Z"] * 3, monkeypatch)
    store = Store(tmp_path)
    assert store.prune_audit(30) == 5
    [anchor] = store.db.query("SELECT * FROM audit_anchors")
    kept = list(store.db.query("SELECT * FROM audit ORDER BY id"))
    store.close()
    # The anchor is the hash the first kept row points back to (row 5's hash).
    assert (anchor["first_id"], anchor["pruned"]) == (6, 5)
    assert anchor["prev_hash"] == kept[0]["prev_hash"] != GENESIS
    assert kept[-1]["action"] == "audit.prune"
    assert json.loads(kept[-1]["detail"])["anchor"] == anchor["prev_hash"]
    result = herd_cli(tmp_path, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "4 rows (6..9)" in result.stdout
    assert f"pruned before row 6; anchor {anchor['prev_hash']}" in result.stdout
    # A second pruning with nothing old left changes nothing.
    store = Store(tmp_path)
    assert store.prune_audit(30) == 0
    store.close()
    # Deleting the first kept row by hand is not a pruning: verify says so.
    edit(tmp_path, "DELETE FROM audit WHERE id = 6")
    result = herd_cli(tmp_path, "audit", "verify")
    assert result.returncode == 1
    assert "audit row 7 breaks the chain: the chain should start at row 6" in (
        result.stderr
    )


def test_pruning_everything_old_keeps_the_head(tmp_path, monkeypatch):
    _audit_at(tmp_path, ["2020-01-01T00:00:00Z"] * 4, monkeypatch)
    store = Store(tmp_path)
    assert store.prune_audit(30) == 3
    rows = list(store.db.query("SELECT id, action FROM audit ORDER BY id"))
    store.close()
    assert rows == [
        {"id": 4, "action": "test.event"},
        {"id": 5, "action": "audit.prune"},
    ]
    assert herd_cli(tmp_path, "audit", "verify").returncode == 0
    edit(tmp_path, "DELETE FROM audit")
    result = herd_cli(tmp_path, "audit", "verify")
    assert result.returncode == 1 and "every row was deleted" in result.stderr


def _writer(state: str, tag: str) -> None:
    store = Store(state)
    for i in range(40):
        store.audit("test.concurrent", {"writer": tag, "i": i})
    store.close()


def test_concurrent_writers_build_one_chain(tmp_path):
    Store(tmp_path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), t)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    result = herd_cli(tmp_path, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "80 rows (1..80)" in result.stdout


def test_listing_filters_and_formats(tmp_path, monkeypatch):
    _audit_at(
        tmp_path,
        ["2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z", "2026-11-03T10:00:00Z"],
        monkeypatch,
    )
    store = Store(tmp_path)
    store.audit("node.pull", {"node": "gpu-1", "model": "llama3.2:3b"})
    store.audit("bundle.refused", {"reason": 'bad, "quoted"\nline\x1b[2J'})
    store.close()
    window = ("--since", "2026-11-02", "--until", "2026-11-03")
    rows = json.loads(herd_cli(tmp_path, "audit", *window, "--json").stdout)
    assert [(r["id"], r["detail"]) for r in rows] == [(2, {"i": 1})]
    out = herd_cli(tmp_path, "audit", "--action", "node.", "--action", "bundle.refused",
                   "--csv").stdout  # fmt: skip
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert [r["action"] for r in parsed] == ["node.pull", "bundle.refused"]
    assert json.loads(parsed[1]["detail"]) == {"reason": 'bad, "quoted"\nline\x1b[2J'}
    assert set(parsed[0]) == {"id", "time", "user", "action", "revision", "detail",
                              "prev_hash", "hash"}  # fmt: skip
    table = herd_cli(tmp_path, "audit", "--action", "node.pull").stdout
    assert "node=gpu-1" in table and "model=llama3.2:3b" in table
    # Stored text cannot add lines or send escape codes to the terminal.
    table = herd_cli(tmp_path, "audit", "--action", "bundle.refused").stdout
    assert len(table.splitlines()) == 2
    assert 'reason=bad, "quoted"\\x0aline' in table
    # The default window is the last 7 days: the 2026-11 rows are not in it.
    assert json.loads(herd_cli(tmp_path, "audit", "--json").stdout)[0]["id"] >= 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("audit", "--since", "yesterday"), "--since 'yesterday': expected a duration"),
        (("audit", "--since", "1d", "--until", "2d"), "is not after --since"),
        (("audit", "verify", "--since", "1d"), "verify checks the whole chain"),
        (("audit", "--json", "--csv"), "not allowed with argument"),
    ],
)
def test_bad_options_are_one_line(tmp_path, args, message):
    audited(tmp_path, 1)
    result = herd_cli(tmp_path, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_no_state_is_one_line(tmp_path):
    result = herd_cli(tmp_path / "none", "audit")
    assert result.returncode == 1
    assert result.stderr.startswith("herd audit: no herd state in")
