"""Showing apply's events: a live line per transfer on a terminal, one line per
event without one, JSON lines for scripts; and the summary at the end.

`Report.add(event)` takes the executor's events in order and keeps, per node,
what was done and what failed and why (the summary and the exit status).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from herd.bundle.progress import human_bytes

#: Steps the summary lists when done (a pull's copy and untag are part of it;
#: any failed step is listed).
SUMMARY_ACTIONS = ("pull", "delete", "warm")


@dataclass
class _Transfer:
    began: float
    completed: int = 0
    total: int = 0


@dataclass
class Report:
    """Renders events to `out` in `mode` (tty, lines or json) and tallies them."""

    mode: str = "lines"
    out: TextIO = field(default_factory=lambda: sys.stdout)
    done: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)
    _live: dict[tuple[str, str], _Transfer] = field(default_factory=dict)
    _shown: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    _drawn: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, event: dict[str, Any]) -> None:
        kind, node = event["event"], event["node"]
        what = f"{event.get('action', 'pull')} {event.get('model', '')}".strip()
        if kind == "done" and event.get("action") in SUMMARY_ACTIONS:
            self.done.setdefault(node, []).append(what)
        elif kind == "failed":
            self.failed.setdefault(node, []).append(f"{what}: {event['error']}")
        if self.mode == "json":
            self.out.write(json.dumps(event, sort_keys=True) + "\n")
            self.out.flush()
            return
        key = (node, event.get("model", ""))
        if kind == "start" and event["action"] == "pull":
            self._live[key] = _Transfer(time.monotonic())
        if kind == "progress":
            live = self._live.setdefault(key, _Transfer(time.monotonic()))
            if event.get("total"):
                live.completed = int(event.get("completed") or 0)
                live.total = int(event["total"])
            if self.mode == "tty":
                self._draw()
                return
            # Without a terminal: a line when the status changes or a quarter
            # more of the blob has arrived.
            quarter = 4 * live.completed // live.total if live.total else -1
            status = str(event.get("status", ""))
            if self._shown.get(key) != (status, quarter):
                self._shown[key] = (status, quarter)
                self._line(_describe(event, live))
            return
        if kind in ("done", "failed"):
            self._live.pop(key, None)
        self._line(_describe(event, self._live.get(key)))

    def _line(self, text: str) -> None:
        if self.mode == "tty" and self._drawn:
            self.out.write("\r\x1b[2K")
            self._drawn = False
        self.out.write(text + "\n")
        if self.mode == "tty":
            self._draw()
        self.out.flush()

    def _draw(self) -> None:
        """The live transfers, on one line rewritten in place."""
        parts = []
        now = time.monotonic()
        for (node, model), t in self._live.items():
            if not t.total:
                parts.append(f"{node} {model} …")
                continue
            rate = t.completed / max(now - t.began, 1e-3)
            parts.append(
                f"{node} {model} {100 * t.completed / t.total:3.0f}% "
                f"{human_bytes(t.completed)}/{human_bytes(t.total)} "
                f"{human_bytes(rate)}/s"
            )
        if not parts and not self._drawn:
            return
        self.out.write("\r\x1b[2K" + " | ".join(parts)[:200])
        self._drawn = bool(parts)
        self.out.flush()

    def summary(self, nodes: list[str], unreachable: tuple[str, ...] = ()) -> str:
        lines = ["Summary:"]
        for node in nodes:
            done, failed = self.done.get(node, []), self.failed.get(node, [])
            if node in unreachable:
                lines.append(f"  {node}: unreachable, not reconciled")
                continue
            if not done and not failed:
                lines.append(f"  {node}: nothing to do")
                continue
            if done:
                lines.append(f"  {node}: done: {', '.join(done)}")
            for failure in failed:
                lines.append(f"  {node}: FAILED {failure}")
        return "\n".join(lines)


def _describe(event: dict[str, Any], live: _Transfer | None) -> str:
    node, action, model = event["node"], event["action"], event.get("model", "")
    kind = event["event"]
    if kind == "start":
        extra = ""
        if action == "pull":
            extra = f" ({human_bytes(event.get('bytes') or 0)} from {event['source']})"
        return f"{node}: {action} {model}{extra} …"
    if kind == "done":
        took = event.get("seconds") or 0
        rate = ""
        if action == "pull" and event.get("bytes") and took:
            rate = f", {human_bytes(event['bytes'] / took)}/s"
        return f"{node}: {action} {model} done in {took:.1f} s{rate}"
    if kind == "failed":
        return f"{node}: {action} {model} FAILED: {event['error']}"
    done = event.get("completed")
    total = event.get("total")
    if total:
        return f"{node}: {model} {event['status']} {100 * (done or 0) / total:.0f}%"
    return f"{node}: {model} {event['status']}"
