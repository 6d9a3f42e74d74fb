"""apply's progress output: a live line on a terminal, lines without one, JSON."""

from __future__ import annotations

import io
import json

from herd.reconcile.progress import Report

EVENTS = [
    {"event": "start", "node": "a", "action": "pull", "model": "m:1", "bytes": 4000,
     "source": "r:1/library/m:1"},
    {"event": "progress", "node": "a", "action": "pull", "model": "m:1",
     "status": "pulling manifest", "completed": None, "total": None},
    {"event": "progress", "node": "a", "action": "pull", "model": "m:1",
     "status": "pulling 0123456789ab", "completed": 1000, "total": 4000},
    {"event": "progress", "node": "a", "action": "pull", "model": "m:1",
     "status": "pulling 0123456789ab", "completed": 1100, "total": 4000},
    {"event": "progress", "node": "a", "action": "pull", "model": "m:1",
     "status": "pulling 0123456789ab", "completed": 4000, "total": 4000},
    {"event": "done", "node": "a", "action": "pull", "model": "m:1", "bytes": 4000,
     "seconds": 2.0, "source": "r:1/library/m:1"},
    {"event": "failed", "node": "b", "action": "delete", "model": "old:1",
     "error": "model 'old:1' not found"},
]  # fmt: skip


def run(mode: str) -> tuple[Report, str]:
    out = io.StringIO()
    report = Report(mode=mode, out=out)
    for event in EVENTS:
        report.add(event)
    return report, out.getvalue()


def test_lines_mode_prints_status_changes_and_quarters_not_every_tick():
    report, text = run("lines")
    lines = text.splitlines()
    assert lines[0] == "a: pull m:1 (3.9 KiB from r:1/library/m:1) …"
    assert "a: m:1 pulling manifest" in lines
    assert "a: m:1 pulling 0123456789ab 25%" in lines
    assert sum("pulling 0123456789ab" in line for line in lines) == 2  # 25%, 100%
    assert "a: pull m:1 done in 2.0 s, 2.0 KiB/s" in lines
    assert lines[-1] == "b: delete old:1 FAILED: model 'old:1' not found"
    assert not report.ok
    assert report.done == {"a": ["pull m:1"]}
    summary = report.summary(["a", "b", "c"], ("c",))
    assert "b: FAILED delete old:1: model 'old:1' not found" in summary
    assert "c: unreachable, not reconciled" in summary


def test_json_mode_is_one_event_per_line():
    _, text = run("json")
    assert [json.loads(line) for line in text.splitlines()] == EVENTS


def test_tty_mode_redraws_one_live_line_with_rate():
    _, text = run("tty")
    assert "\r\x1b[2K" in text
    assert "a m:1  25% 1000 B/3.9 KiB" in text
    assert text.rstrip("\n").endswith("b: delete old:1 FAILED: model 'old:1' not found")
