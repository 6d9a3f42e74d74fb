"""Health checks about nodes: reachability, agents, memory, disk, queues, clocks.

Memory, disk, heartbeats and clock skew come from the `herd node` agent; a
node without one gets an "unknown" finding for each, never a pass.
"""

from __future__ import annotations

from typing import Any

from herd.health.finding import Finding, no_agent, offline, unknown
from herd.health.snapshot import Snapshot

#: Heartbeats missed before an agent counts as silent.
SILENT_BEATS = 3
#: Memory pressure (PSI some avg10, percent) that is a warning / critical.
PRESSURE_WARN, PRESSURE_CRIT = 10.0, 40.0
#: Swap traffic (bytes/s in + out) that means a node is swapping.
SWAP_WARN_BPS = 1024 * 1024
#: Model store disk use (fraction) that is a warning / critical.
DISK_WARN, DISK_CRIT = 0.90, 0.97
#: Seconds a node's queue may stay over its slots.
SATURATED_S = 60.0
#: Clock skew between router and agent that is a warning.
SKEW_WARN_S = 5.0


def node_down(s: Snapshot) -> list[Finding]:
    if not s.live:
        return unknown(
            "node_down",
            "node states unknown: the router did not answer",
            "start the router (`herd serve` or systemctl start herd-router)",
        )
    out = []
    for n in s.nodes:
        if n.state == "down":
            why = f" ({n.last_error})" if n.last_error else ""
            out.append(
                Finding(
                    "node_down",
                    "critical",
                    f"node {n.name} is down{why}",
                    f"check Ollama on {n.name} (systemctl status ollama) and the "
                    "network between it and the router",
                )
            )
        elif n.state != "up":
            out.append(
                Finding(
                    "node_down",
                    "unknown",
                    f"node {n.name} has not been polled yet",
                    "wait a few seconds; if it stays so, check the router's log",
                )
            )
    return out


def agent_silent(s: Snapshot) -> list[Finding]:
    if not s.live:
        return offline("agent_silent")
    out, without = [], []
    for n in s.nodes:
        if n.agent is not None:
            limit = SILENT_BEATS * n.agent.interval_s
            if n.agent.heartbeat_age_s > limit:
                out.append(
                    Finding(
                        "agent_silent",
                        "warning",
                        f"node {n.name}: no heartbeat for "
                        f"{n.agent.heartbeat_age_s:.0f} s (every "
                        f"{n.agent.interval_s:g} s expected)",
                        f"check `herd node` on {n.name} (journalctl -u herd-node)",
                    )
                )
        elif n.agent_lost_s is not None:
            out.append(
                Finding(
                    "agent_silent",
                    "warning",
                    f"node {n.name}: its agent stopped reporting "
                    f"{n.agent_lost_s:.0f} s ago and left the fleet",
                    f"check `herd node` on {n.name} (journalctl -u herd-node)",
                )
            )
        else:
            without.append(n)
    return out + no_agent("agent_silent", "agent heartbeat", without)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def memory(s: Snapshot) -> list[Finding]:
    if not s.live:
        return offline("memory")
    out, without = [], []
    for n in s.nodes:
        if n.agent is None:
            without.append(n)
            continue
        metrics = n.agent.metrics
        mem = metrics.get("memory") if isinstance(metrics.get("memory"), dict) else {}
        swap = metrics.get("swap") if isinstance(metrics.get("swap"), dict) else {}
        pressure = _number(mem.get("pressure_avg10"))
        rate = (_number(swap.get("in_per_s")) or 0) + (
            _number(swap.get("out_per_s")) or 0
        )
        total, free = _number(mem.get("total")), _number(mem.get("available"))
        if pressure is None and total is None:
            without.append(n)
            continue
        problems, severity = [], "warning"
        if pressure is not None and pressure >= PRESSURE_WARN:
            problems.append(f"memory pressure {pressure:.0f}%")
            if pressure >= PRESSURE_CRIT:
                severity = "critical"
        if rate >= SWAP_WARN_BPS:
            problems.append(f"swapping {rate / 1024**2:.1f} MB/s")
        if total and free is not None and free / total < 0.05:
            problems.append(f"{free / total:.0%} of memory available")
        if problems:
            out.append(
                Finding(
                    "memory",
                    severity,
                    f"node {n.name}: " + ", ".join(problems),
                    f"unload models on {n.name} (smaller keep_loaded set) or move "
                    "some to a node with more memory",
                )
            )
    return out + no_agent("memory", "memory pressure and swap", without)


def disk(s: Snapshot) -> list[Finding]:
    if not s.live:
        return offline("disk")
    out, without = [], []
    for n in s.nodes:
        d = n.agent.metrics.get("disk") if n.agent is not None else None
        total = _number(d.get("total")) if isinstance(d, dict) else None
        free = _number(d.get("free")) if isinstance(d, dict) else None
        if not total or free is None:
            without.append(n)
            continue
        used = 1 - free / total
        if used >= DISK_WARN:
            out.append(
                Finding(
                    "disk",
                    "critical" if used >= DISK_CRIT else "warning",
                    f"node {n.name}: model store {d.get('path', '')} is {used:.0%} "
                    f"full ({free / 1024**3:.1f} GB free)",
                    f"remove unused models from {n.name} (`herd apply --prune`) or "
                    "grow the disk",
                )
            )
    return out + no_agent("disk", "model store disk use", without)


def queue(s: Snapshot) -> list[Finding]:
    if not s.live:
        return offline("queue")
    out = []
    for n in s.nodes:
        if n.saturated_s is not None and n.saturated_s >= SATURATED_S:
            out.append(
                Finding(
                    "queue",
                    "warning",
                    f"node {n.name}: more requests waiting than its "
                    f"{n.max_concurrency} slot(s) for {n.saturated_s:.0f} s",
                    "add replicas of its models on other nodes, or raise "
                    "max_concurrency if the node has headroom",
                )
            )
    return out


def clock_skew(s: Snapshot) -> list[Finding]:
    if not s.live:
        return offline("clock_skew")
    out, without = [], []
    for n in s.nodes:
        skew = n.agent.clock_skew_s if n.agent is not None else None
        if skew is None:
            without.append(n)
            continue
        if abs(skew) >= SKEW_WARN_S:
            near = abs(skew) >= s.max_clock_skew_s / 2
            out.append(
                Finding(
                    "clock_skew",
                    "critical" if near else "warning",
                    f"node {n.name}: clock {skew:+.0f} s from the router's "
                    f"(heartbeats are refused beyond {s.max_clock_skew_s:g} s)",
                    f"run NTP (chrony or systemd-timesyncd) on {n.name} and the router",
                )
            )
    return out + no_agent("clock_skew", "clock skew", without)
