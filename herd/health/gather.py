"""Gathering the health snapshot: inside the router (`Monitor`), or from the
state directory alone when no router answers (`offline_snapshot`).

The monitor runs off the request path: a background loop samples each node's
queue every few seconds (how long it has been saturated) and remembers which
nodes had an agent. A request to /dashboard/api/health reads those, the
traces.db aggregates (queried in a thread, at most every `TRACES_TTL_S`), the
poller's node health, the agents' last heartbeats, the pointer and the
scrub's results.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.dashboard.cached import Cached
from herd.health.scrub import read_facts
from herd.health.snapshot import (
    AgentFacts,
    ModelFacts,
    NodeFacts,
    Snapshot,
    TraceFacts,
)
from herd.health.tracestats import trace_facts
from herd.manifest.model import Fleet
from herd.pointer import POINTER_NAME, read_pointer

log = logging.getLogger("herd.router")

SAMPLE_S = 5.0
TRACES_TTL_S = 15.0


def saturated(in_flight: int, waiting: int, limit: int, depth: int) -> bool:
    """Every slot busy and more waiting than there are slots (or the queue,
    if shorter than that, full)."""
    return in_flight >= limit and waiting > 0 and waiting >= min(limit + 1, depth)


def applied(state_dir: str | os.PathLike[str] | None, now: float):
    """(applied revision, seconds since it was applied) from the pointer."""
    if state_dir is None:
        return None, None
    try:
        pointer = read_pointer(state_dir)
        age = now - (Path(state_dir) / POINTER_NAME).stat().st_mtime
    except Exception:  # noqa: BLE001 - a damaged pointer is the revision check's
        return None, None
    if pointer is None:
        return None, None
    return pointer.revision, max(0.0, age)


def model_facts(fleet: Fleet, models: list[dict[str, Any]]) -> tuple[ModelFacts, ...]:
    """ModelFacts from /fleet/status's `models` (herd.router.api.fleet.models_view)."""
    keep = {m.name: m.keep_loaded is not None for m in fleet.models}
    return tuple(
        ModelFacts(
            name=m["name"],
            placed_on=tuple(m["placed_on"]),
            on_disk=tuple(m["on_disk"]),
            loaded=tuple(m["loaded"]),
            keep_loaded=keep.get(m["name"], False),
        )
        for m in models
    )


def agent_facts(member: Any, now: float) -> AgentFacts:
    clock = member.metrics.get("clock")
    skew = None
    if isinstance(clock, int | float) and not isinstance(clock, bool):
        skew = member.last_seen - float(clock)
    return AgentFacts(
        heartbeat_age_s=max(0.0, now - member.last_seen),
        interval_s=member.interval_s,
        metrics=member.metrics,
        clock_skew_s=skew,
    )


class Monitor:
    """The router's health engine: samples in the background, snapshots on ask."""

    def __init__(
        self,
        runtime: Any,
        state_dir: str | os.PathLike[str] | None,
        bundle_store: Callable[[], Path] | None = None,
    ):
        self.rt = runtime
        self.state_dir = state_dir
        self.bundle_store = bundle_store
        self._saturated_since: dict[str, float] = {}
        self._agent_seen: dict[str, float] = {}
        #: The fleet of the latest snapshot asked for (what the caches read).
        self._fleet: Fleet | None = None
        # Each computed once for concurrent callers (a burst of polls once the
        # TTL is over waits for one query, not one each) and kept TRACES_TTL_S.
        self._traces = Cached(
            self._query, TRACES_TTL_S, clock=lambda: runtime.monotonic()
        )
        # The peers are asked over gevent's sockets: in the loop, not a thread.
        self._peers = Cached(
            self._ask_peers,
            TRACES_TTL_S,
            clock=lambda: runtime.monotonic(),
            in_thread=False,
        )

    def sample(self) -> None:
        """One look at every node's queue and agent (the background loop's step)."""
        rt = self.rt
        mono = rt.monotonic()
        fleet = rt.served().fleet
        member_of = getattr(rt.poller, "member", None)
        for node in fleet.nodes:
            slots = rt.queues.slots(node.name)
            if saturated(slots.in_flight, slots.waiting, slots.limit, slots.depth):
                self._saturated_since.setdefault(node.name, mono)
            else:
                self._saturated_since.pop(node.name, None)
            member = member_of(node) if member_of else None
            if member is not None:
                self._agent_seen[node.name] = member.last_seen

    def run(self, stopped: Callable[[], bool]) -> None:
        import gevent

        while not stopped():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the monitor must never die
                log.exception("health sampling failed")
            gevent.sleep(SAMPLE_S)

    def _query(self) -> TraceFacts | None:
        if self.state_dir is None or self._fleet is None:
            return None
        retention_days = self._fleet.audit.retention_days
        return trace_facts(self.state_dir, self.rt.clock(), retention_days)

    def _trace_facts(self, fleet: Fleet) -> TraceFacts | None:
        """traces.db aggregates, at most every TRACES_TTL_S, queried only when
        asked and in a thread of gevent's pool: a slow query over a big
        database holds up the health requests waiting for it, never the event
        loop, and takes one pool thread however many polls wait."""
        self._fleet = fleet
        facts = self._traces.get()
        if facts is None:
            return None
        traces = self.rt.traces
        return TraceFacts(
            **{
                **facts.__dict__,
                "dropped": traces.dropped,
                "write_failures": traces.write_failures,
            }
        )

    def snapshot(self, served: Any) -> Snapshot:
        from herd.router.api.fleet import models_view

        rt = self.rt
        fleet = served.fleet
        now, mono = rt.clock(), rt.monotonic()
        member_of = getattr(rt.poller, "member", None)
        nodes = []
        for node in fleet.nodes:
            health = rt.poller.get(node)
            member = member_of(node) if member_of else None
            seen = self._agent_seen.get(node.name)
            since = self._saturated_since.get(node.name)
            nodes.append(
                NodeFacts(
                    name=node.name,
                    state={True: "up", False: "down", None: "unknown"}[health.up],
                    last_error=health.last_error,
                    agent=agent_facts(member, now) if member is not None else None,
                    agent_lost_s=None
                    if member is not None or seen is None
                    else max(0.0, now - seen),
                    max_concurrency=node.max_concurrency,
                    waiting=rt.queues.waiting(node.name),
                    saturated_s=None if since is None else mono - since,
                )
            )
        revision, age = applied(self.state_dir, now)
        store = self.bundle_store() if self.bundle_store is not None else None
        scrub = (
            read_facts(self.state_dir, now, str(store))
            if self.state_dir is not None
            else None
        )
        return Snapshot(
            source="router",
            fleet=fleet.name,
            nodes=tuple(nodes),
            models=model_facts(fleet, models_view(rt, fleet)),
            revision_applied=revision,
            revision_served=served.revision,
            applied_age_s=age,
            reload_error=getattr(rt.source, "last_error", None),
            traces=self._trace_facts(fleet),
            scrub=scrub,
            max_clock_skew_s=fleet.discovery.max_clock_skew_s,
            sha256_served=served.sha256,
            ha_peers=self._ha_peers(fleet),
        )

    def _ha_peers(self, fleet: Fleet) -> tuple[tuple[str, str | None], ...] | None:
        """The peers' digests, asked at most every TRACES_TTL_S. The worker's
        sockets are gevent's, so the ask (2 s timeout) yields to the requests."""
        if fleet.router.ha is None:
            return None
        self._fleet = fleet
        return self._peers.get()

    def _ask_peers(self) -> tuple[tuple[str, str | None], ...] | None:
        from herd.router import hapeers, report

        if self._fleet is None or self._fleet.router.ha is None:
            return None
        states = hapeers.peer_states(self._fleet, None, report.fetch_live)
        return tuple((p.address, p.sha256) for p in states)


def offline_snapshot(
    state_dir: str, fleet: Fleet, store: Path | None, now: float | None = None
) -> Snapshot:
    """What can be known without a router: the pointer, traces.db, the scrub's
    last results. Node facts are unknown."""
    now = time.time() if now is None else now
    revision, age = applied(state_dir, now)
    return Snapshot(
        source="state-dir",
        fleet=fleet.name,
        nodes=tuple(NodeFacts(n.name, "unknown") for n in fleet.nodes),
        revision_applied=revision,
        revision_served=None,
        applied_age_s=age,
        traces=trace_facts(state_dir, now, fleet.audit.retention_days),
        scrub=read_facts(state_dir, now, str(store) if store else None),
        max_clock_skew_s=fleet.discovery.max_clock_skew_s,
        live=False,
    )
