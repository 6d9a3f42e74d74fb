"""The admitted agents as commands outside the router see them.

The router's workers keep the nodes that joined by signed heartbeat in
`STATE_DIR/discovery.db` (herd.discovery.membership). `herd plan` and `herd
apply` run on the same host with the same state directory: they read that
store, read-only, to plan for discovered nodes like for the manifest's own
(placements by label cover them) and to learn what each agent reports, such
as the disk free where its Ollama keeps models.

Only members heard within `discovery.heartbeat_timeout_s` count: a router
that stopped leaves rows behind, and those nodes are not planned for.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from herd.discovery.member import Member
from herd.manifest.model import Fleet, Node

DB_NAME = "discovery.db"


def live_members(
    state_dir: str | Path | None,
    timeout_s: float,
    clock: Callable[[], float] = time.time,
) -> list[Member]:
    """Members heard within `timeout_s`, by name; [] when there is no store
    (no router has run here) or it cannot be read."""
    if state_dir is None:
        return []
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            rows = db.execute(
                "SELECT name, address, url, static_name, via, first_seen, "
                "last_seen, seq, doc FROM members WHERE last_seen >= ? ORDER BY name",
                (clock() - timeout_s,),
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []
    members = []
    for row in rows:
        try:
            members.append(Member.from_row(row))
        except (ValueError, TypeError, AttributeError):
            continue  # a row this version cannot read: skip, never fail a plan
    return members


def node_name(member: Member) -> str:
    """The fleet node a member reports for (a static node's name, or its own)."""
    return member.static_name or member.name


def disk_free(members: Iterable[Member]) -> dict[str, int]:
    """Node name → bytes free on the disk holding the node's Ollama models, for
    every member whose agent reports it (`metrics.disk.free`)."""
    out = {}
    for member in members:
        free = disk_free_of(member.metrics)
        if free is not None:
            out[node_name(member)] = free
    return out


def disk_free_of(metrics: Mapping[str, Any]) -> int | None:
    """`metrics.disk.free` of one heartbeat, when it is a sane byte count."""
    disk = metrics.get("disk")
    free = disk.get("free") if isinstance(disk, Mapping) else None
    if isinstance(free, bool) or not isinstance(free, int | float) or free < 0:
        return None
    return int(free)


def with_discovered(fleet: Fleet, members: Iterable[Member]) -> Fleet:
    """`fleet` with each discovered (non-static) member appended as a node,
    labelled and limited as `discovery.mdns.defaults` and its overrides say.
    The router serves the same merged fleet (herd.discovery.source)."""
    extra = []
    for member in sorted(members, key=lambda m: m.name):
        if member.static_name is not None or fleet.node(member.name) is not None:
            continue
        labels, concurrency = fleet.discovery.node_settings(member.name)
        extra.append(
            Node(
                name=member.name,
                url=member.url,
                labels=labels,
                max_concurrency=concurrency,
            )
        )
    if not extra:
        return fleet
    return replace(fleet, nodes=fleet.nodes + tuple(extra))


def describe(member: Member, now: float) -> str:
    """How a discovered node was found, for the plan: `agent via mdns from
    10.20.2.7, heard 3 s ago`."""
    age = max(0.0, now - member.last_seen)
    return f"agent via {member.via} from {member.address}, heard {age:.0f} s ago"
