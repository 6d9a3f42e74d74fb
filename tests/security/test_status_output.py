"""`herd status` prints what agents and mDNS announcements report (versions,
model names, how a node was found, instance names): text from the network.
Printed as sent, a line break forges a status line and an escape sequence
drives the operator's terminal; `shown` escapes both before rendering."""

from __future__ import annotations

from herd.ops.output import shown
from herd.router import report

HOSTILE = "0.1\x1b[2J\nnode ok\u202e"


def live_status() -> dict:
    return {
        "fleet": "f",
        "revision": 3,
        "source": "live router http://127.0.0.1:1",
        "nodes": [
            {
                "name": "gpu-a",
                "state": "up",
                "version": HOSTILE,
                "in_flight": 0,
                "max_concurrency": 2,
                "loaded": [HOSTILE],
                "url": "http://10.0.0.1:11434",
                "found": "x\ny",
                "admission": HOSTILE,
            }
        ],
        "models": [],
        "discovery": {
            "candidates": [{"name": HOSTILE, "addresses": ["10.0.0.9"], "port": 1}],
            "refused": [],
        },
    }


def test_status_text_escapes_what_the_network_reported():
    plain = report.render(live_status())
    text = report.render(shown(live_status()))
    assert "\x1b" in plain and "\u202e" in plain  # (what `shown` is for)
    assert "\x1b" not in text and "\u202e" not in text
    assert "0.1\\x1b[2J\\nnode ok\\u202e" in text
    assert all(line.isprintable() for line in text.splitlines())
    # Printed as sent, the reported text starts lines of its own; escaped, never.
    assert any(line.startswith("node ok") for line in plain.splitlines())
    assert not any(line.startswith(("node ok", "y ")) for line in text.splitlines())


def test_shown_keeps_printable_text_and_other_values():
    doc = {"a": ["b c", 1, None, 2.5], "d\te": True}
    assert shown(doc) == {"a": ["b c", 1, None, 2.5], "d\\te": True}
    assert shown("plain text") == "plain text"
