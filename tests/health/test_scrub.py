"""The bundle store scrub: bounded reads per tick, rotation over every blob,
mismatches found and remembered in scrub.json, one scrubber per state dir."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from herd.health.scrub import Scrub, read_facts


def put(store: Path, data: bytes) -> Path:
    path = store / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def scrub(tmp_path: Path, budget: int) -> Scrub:
    return Scrub(lambda: tmp_path / "store", tmp_path, budget=budget, clock=lambda: 100)


def test_each_tick_reads_at_most_its_budget_and_every_blob_is_reached(tmp_path):
    blobs = [put(tmp_path / "store", bytes([i]) * 10_000) for i in range(5)]
    s = scrub(tmp_path, budget=3000)
    reads = [s.tick() for _ in range(20)]
    assert max(reads) <= 3000
    assert sum(reads) >= 50_000  # a large blob spans ticks, resumed where it was
    assert s.state["verified"] >= len(blobs)
    assert s.state["full_passes"] >= 1
    assert s.state["mismatches"] == []


def test_a_corrupted_blob_is_found_and_cleared_once_repaired(tmp_path):
    good = b"weights" * 100
    blobs = [put(tmp_path / "store", good), put(tmp_path / "store", b"other")]
    blobs[0].write_bytes(b"rotten" * 100)
    s = scrub(tmp_path, budget=1 << 20)
    s.tick()
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    assert s.state["mismatches"] == [digest]
    facts = read_facts(tmp_path, now=160, store=str(tmp_path / "store"))
    assert facts.mismatches == (digest,) and facts.last_tick_age_s == 60
    # Another store configured: the old results do not describe it.
    assert read_facts(tmp_path, now=160, store="/elsewhere") is None
    blobs[0].write_bytes(good)
    s.tick()
    s.tick()
    assert json.loads((tmp_path / "scrub.json").read_text())["mismatches"] == []


def test_a_removed_bad_blob_is_forgotten_after_a_pass(tmp_path):
    bad = put(tmp_path / "store", b"x")
    put(tmp_path / "store", b"y")
    bad.write_bytes(b"z")
    s = scrub(tmp_path, budget=1 << 20)
    s.tick()
    assert s.state["mismatches"]
    bad.unlink()
    s.tick()
    s.tick()
    assert s.state["mismatches"] == []


def test_no_store_is_no_work_and_never_ran_is_none(tmp_path):
    assert read_facts(tmp_path, now=0) is None
    s = scrub(tmp_path, budget=100)
    assert s.tick() == 0
    assert read_facts(tmp_path, now=100).blobs == 0


def test_one_scrubber_per_state_dir(tmp_path):
    first, second = scrub(tmp_path, 10), scrub(tmp_path, 10)
    assert first.holds_lock()
    assert not second.holds_lock()


#: scrub.json damaged in each way a value can be (a disk error, a hand edit).
DAMAGED = [
    {"last_tick": None},
    {"last_tick": "x"},
    {"last_tick": True},
    {"last_tick": 1e400},  # inf once read
    {"last_tick": 1, "blobs": "many"},
    {"last_tick": 1, "blobs": [1]},
    {"last_tick": 1, "blobs": 1e400},
    {"last_tick": 1, "verified": -1},
    {"last_tick": 1, "full_passes": 2.5},
    {"last_tick": 1, "mismatches": 5},
    {"last_tick": 1, "mismatches": [{"a": 1}]},
    {"last_tick": 1, "cursor": 3},
    {"last_tick": 1, "store": ["x"]},
]


def test_a_damaged_state_file_is_never_ran_and_the_scrub_starts_over(tmp_path):
    """Each of these made read_facts (so /dashboard/api/health) raise, or the
    scrub fail on every tick; now the file counts as absent and the next tick
    rewrites it."""
    put(tmp_path / "store", b"x")
    store = str(tmp_path / "store")
    for damaged in DAMAGED:
        state = {"store": store, **damaged}
        (tmp_path / "scrub.json").write_text(json.dumps(state))
        assert read_facts(tmp_path, now=160, store=store) is None, damaged
        s = scrub(tmp_path, budget=1 << 20)
        assert s.state["verified"] == 0 and s.state["mismatches"] == [], damaged
        s.tick()
        assert read_facts(tmp_path, now=160, store=store).verified >= 1, damaged
    for text in ("[1]", "{", "[" * 100_000):
        (tmp_path / "scrub.json").write_text(text)
        assert read_facts(tmp_path, now=160, store=store) is None
