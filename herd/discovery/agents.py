"""Node health that also knows what `herd node` agents report.

`AgentAwareHealth` is the static poller (herd.discovery.static) for the
manifest's nodes, and for discovered nodes turns each heartbeat into the same
`NodeHealth` a poll would give (models on disk and loaded, version), so a
discovered node is never polled: its agent reports. A static node whose agent
also heartbeats keeps being polled and gains the agent's metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from herd.discovery.health import NodeHealth, PollResult, connection_refused, observe
from herd.discovery.member import Member
from herd.discovery.membership import Membership
from herd.discovery.static import StaticPoller
from herd.manifest.model import Fleet, Node


def memory_facts(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What scoring needs from an agent's metrics: memory free for a cold load
    (RAM available plus free GPU memory), swap traffic and memory pressure."""
    facts: dict[str, Any] = {}
    memory = metrics.get("memory")
    if isinstance(memory, Mapping):
        available = _number(memory.get("available"))
        if available is not None:
            gpus = metrics.get("gpus")
            for gpu in gpus if isinstance(gpus, list) else ():
                if isinstance(gpu, Mapping):
                    available += _number(gpu.get("memory_free")) or 0
            facts["memory_available"] = int(available)
        pressure = _number(memory.get("pressure_avg10"))
        if pressure is not None:
            facts["memory_pressure"] = pressure
    swap = metrics.get("swap")
    if isinstance(swap, Mapping):
        # psutil counts swap traffic in bytes (sin/sout).
        rate = (_number(swap.get("in_per_s")) or 0) + (
            _number(swap.get("out_per_s")) or 0
        )
        facts["swap_per_s"] = rate
    return facts


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value >= 0 else None


class AgentAwareHealth(StaticPoller):
    """Health of static nodes by polling, of discovered nodes by heartbeat."""

    def __init__(
        self,
        fleet: Callable[[], Fleet],
        upstream: Any,
        clock: Callable[[], float],
        *,
        membership: Membership,
        static_fleet: Callable[[], Fleet],
        **kw: Any,
    ):
        super().__init__(fleet, upstream, clock, **kw)
        self.membership = membership
        self._static_fleet = static_fleet
        self._agent: dict[str, tuple[int, NodeHealth]] = {}
        self._refused: dict[str, NodeHealth] = {}
        self._by_static: tuple[int, dict[str, Member]] = (-1, {})
        self._memory: dict[str, tuple[int, dict[str, Any]]] = {}
        self._kept = float("-inf")

    def member(self, node: Node) -> Member | None:
        """The agent reporting for `node` (a discovered node, or a static one
        whose agent heartbeats with its URL), if any."""
        members = self.membership.members
        found = members.get(node.name)
        if found is not None and found.static_name is None:
            return found
        generation, index = self._by_static
        if generation != self.membership.generation:
            index = {m.static_name: m for m in members.values() if m.static_name}
            self._by_static = (self.membership.generation, index)
        found = index.get(node.name)
        if found is not None and found.name in members:
            return members[found.name]
        return None

    def memory(self, node: Node, health: NodeHealth, key: str) -> dict[str, Any]:
        """Memory facts for scoring `key` on `node` (Candidate keyword args);
        empty when no agent reports for the node."""
        if not self.membership.members:  # no agent reports (a static fleet)
            return {}
        member = self.member(node)
        if member is None:
            return {}
        cached = self._memory.get(node.name)
        if cached is None or cached[0] != member.seq:
            cached = (member.seq, memory_facts(member.metrics))
            self._memory[node.name] = cached
        facts = dict(cached[1])
        entry = health.details.get(key)
        size = entry.get("size") if entry is not None else None
        if isinstance(size, int) and size > 0:
            facts["model_bytes"] = size
        return facts

    def get(self, node: Node) -> NodeHealth:
        member = self.membership.members.get(node.name)
        if member is None or member.static_name is not None:
            return super().get(node)
        cached = self._agent.get(node.name)
        if cached is not None and cached[0] == member.seq:
            health = cached[1]
        else:
            prev = cached[1] if cached else NodeHealth(node.name, node.url)
            result = PollResult(
                ok=member.ollama_error is None,
                version=member.version,
                tags=member.models,
                ps=member.loaded,
                error=member.ollama_error,
            )
            health = observe(prev, result, member.last_seen)
            self._agent[node.name] = (member.seq, health)
        refused = self._refused.get(node.name)
        if refused is not None and (refused.last_poll or 0) >= member.last_seen:
            return refused
        return health

    def report_refused(self, node: Node, error: str) -> None:
        if node.name in self._agent:
            self._refused[node.name] = connection_refused(
                self.get(node), error, self._clock()
            )
            return
        super().report_refused(node, error)

    def poll_once(self, spread: float = 0.0) -> None:
        """Poll the manifest's own nodes; discovered ones report by heartbeat."""
        fleet = self._static_fleet()
        self._housekeeping(fleet)
        self.poll_nodes(fleet, spread)

    def follow_once(self) -> None:
        """A worker that does not poll still keeps the members current."""
        fleet = self._static_fleet()
        now = time.monotonic()
        if now - self._kept >= self.interval:
            self._kept = now
            self._housekeeping(fleet)
        self.follow()

    def _housekeeping(self, fleet: Fleet) -> None:
        # Also when no request comes: flush heartbeats for the other workers,
        # expire silent members.
        self.membership.check(fleet.discovery.heartbeat_timeout_s)
        live = self.membership.members
        for name in [n for n in self._agent if n not in live]:
            del self._agent[name]
            self._refused.pop(name, None)
