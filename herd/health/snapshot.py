"""The frozen facts the health checks read: no I/O, no clocks, no router.

`herd.health.gather` builds a `Snapshot` inside the router (or, for `herd
health` without a router, from the state directory alone); `herd.health.checks`
turns it into findings. A fact that could not be known is None, never a
default that looks healthy: the checks report such a fact as "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class AgentFacts:
    """What a node's `herd node` agent last reported."""

    heartbeat_age_s: float
    interval_s: float
    #: The agent's host metrics (herd.node.metrics: memory, swap, disk...).
    metrics: Mapping[str, Any] = field(default_factory=_empty)
    #: Router clock minus the agent's clock when it sent the beat, if it said.
    clock_skew_s: float | None = None


@dataclass(frozen=True)
class NodeFacts:
    name: str
    #: "up", "down" or "unknown" (never polled, or no router to ask).
    state: str
    last_error: str | None = None
    #: None: no agent reports for this node.
    agent: AgentFacts | None = None
    #: The agent reported before and stopped (it left the membership).
    agent_lost_s: float | None = None
    max_concurrency: int = 1
    #: Requests waiting for a slot now, and for how long waiting has exceeded
    #: the node's slots without a break (None: not saturated, or not known).
    waiting: int | None = None
    saturated_s: float | None = None


@dataclass(frozen=True)
class ModelFacts:
    name: str
    #: Nodes the manifest places it on (after replicas), on disk, loaded.
    placed_on: tuple[str, ...]
    on_disk: tuple[str, ...]
    loaded: tuple[str, ...]
    keep_loaded: bool = False


@dataclass(frozen=True)
class TtftFacts:
    """p95 time to first token of one model: last 5 minutes vs 24 h before."""

    model: str
    recent_p95_ms: float | None
    recent_count: int
    baseline_p95_ms: float | None
    baseline_count: int


@dataclass(frozen=True)
class TraceFacts:
    """Aggregates of traces.db (None: no database yet)."""

    recent_total: int
    recent_errors: int
    #: The node and model with the most recent errors, for the finding's text.
    worst: str | None
    ttft: tuple[TtftFacts, ...]
    db_bytes: int
    oldest_age_s: float | None
    retention_days: int
    dropped: int | None = None
    write_failures: int | None = None


@dataclass(frozen=True)
class ScrubFacts:
    """What the bundle store scrub has found so far."""

    store: str
    blobs: int
    verified: int
    #: Digests whose content does not hash to their name, and blobs gone.
    mismatches: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    #: Seconds since the scrub last made progress (None: never ran).
    last_tick_age_s: float | None = None
    #: One full pass over every blob completed at least once.
    full_passes: int = 0


@dataclass(frozen=True)
class Snapshot:
    #: Where the facts come from: "router" (live) or "state-dir".
    source: str
    fleet: str
    nodes: tuple[NodeFacts, ...] = ()
    models: tuple[ModelFacts, ...] = ()
    revision_applied: int | None = None
    #: None when no router was asked.
    revision_served: int | None = None
    applied_age_s: float | None = None
    reload_error: str | None = None
    traces: TraceFacts | None = None
    scrub: ScrubFacts | None = None
    max_clock_skew_s: float = 30.0
    #: False when the facts about nodes could not be gathered at all.
    live: bool = True
    #: The revision digest this router serves, and each other router of
    #: router.ha with the digest it serves (None: it did not answer). None
    #: when the manifest has no router.ha or the peers were not asked.
    sha256_served: str | None = None
    ha_peers: tuple[tuple[str, str | None], ...] | None = None
