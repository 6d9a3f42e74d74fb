"""Health checks: pure functions from a `Snapshot` to findings.

Each check has an id and returns findings, each with a severity (critical,
warning, info or unknown), a one-line finding and a suggested action. A check
that has nothing to report returns no finding and counts as passed. A check
whose facts are missing (no router to ask, no `herd node` agent on a node)
reports "unknown": never a pass it could not verify.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from herd.health.snapshot import NodeFacts, Snapshot

SEVERITIES = ("critical", "warning", "unknown", "info")

#: Heartbeats missed before an agent counts as silent.
SILENT_BEATS = 3
#: Memory pressure (PSI some avg10, percent) that is a warning / critical.
PRESSURE_WARN, PRESSURE_CRIT = 10.0, 40.0
#: Swap traffic (bytes/s in + out) that means a node is swapping.
SWAP_WARN_BPS = 1024 * 1024
#: Model store disk use (fraction) that is a warning / critical.
DISK_WARN, DISK_CRIT = 0.90, 0.97
#: Error rate over the last 5 minutes, and the fewest requests it is judged on.
ERROR_RATE_WARN, ERROR_RATE_CRIT, ERROR_MIN_REQUESTS = 0.05, 0.25, 20
#: p95 TTFT ratio against the 24 h baseline, and the fewest samples for each.
TTFT_RATIO, TTFT_MIN_RECENT, TTFT_MIN_BASELINE = 2.0, 10, 50
#: Seconds a node's queue may stay over its slots.
SATURATED_S = 60.0
#: traces.db size that deserves a look, and the slack on retention pruning
#: (rows are pruned hourly; older than retention plus this means it stopped).
TRACE_DB_WARN_BYTES = 2 * 1024**3
RETENTION_SLACK_S = 2 * 86400.0
#: Seconds a revision may be applied and not served (the router checks twice
#: a second) before it is a finding.
RELOAD_GRACE_S = 10.0
#: Clock skew between router and agent that is a warning.
SKEW_WARN_S = 5.0
#: Seconds without scrub progress before the scrub counts as stalled.
SCRUB_STALLED_S = 3600.0


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    finding: str
    action: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


Check = Callable[[Snapshot], Iterable[Finding]]


def _names(nodes: Iterable[NodeFacts]) -> str:
    return ", ".join(n.name for n in nodes)


def _no_agent(check: str, what: str, nodes: list[NodeFacts]) -> list[Finding]:
    """The "unknown" finding for nodes no agent reports for."""
    if not nodes:
        return []
    return [
        Finding(
            check,
            "unknown",
            f"{what} unknown on {_names(nodes)}: no herd node agent reports there",
            "run `herd node --router URL` on the node to report host metrics",
        )
    ]


def _offline(check: str) -> list[Finding]:
    """The "unknown" finding of a check that needs the live router."""
    return [
        Finding(
            check,
            "unknown",
            f"{check.replace('_', ' ')}: unknown, the router did not answer",
            "start the router (`herd serve` or systemctl start herd-router)",
        )
    ]


def node_down(s: Snapshot) -> list[Finding]:
    if not s.live:
        return [
            Finding(
                "node_down",
                "unknown",
                "node states unknown: the router did not answer",
                "start the router (`herd serve` or systemctl start herd-router)",
            )
        ]
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
        return _offline("agent_silent")
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
    return out + _no_agent("agent_silent", "agent heartbeat", without)


def model_nowhere(s: Snapshot) -> list[Finding]:
    if not s.live:
        return [
            Finding(
                "model_nowhere",
                "unknown",
                "which node holds which model is unknown: the router did not answer",
                "start the router, then run `herd health` again",
            )
        ]
    states = {n.name: n.state for n in s.nodes}
    out = []
    for m in s.models:
        if m.on_disk:
            continue
        unknown = [n for n in m.placed_on if states.get(n) != "up"]
        if unknown or not m.placed_on:
            why = (
                f"its nodes ({', '.join(unknown)}) are not up"
                if unknown
                else "no node is up to place it on"
            )
            out.append(
                Finding(
                    "model_nowhere",
                    "unknown",
                    f"model {m.name}: not known to be on any node ({why})",
                    "bring its nodes up, then `herd plan` shows what is missing",
                )
            )
            continue
        out.append(
            Finding(
                "model_nowhere",
                "critical",
                f"model {m.name} is declared but on no node: requests for it fail",
                "run `herd apply` to pull or copy it to " + ", ".join(m.placed_on),
            )
        )
    return out


def keep_loaded(s: Snapshot) -> list[Finding]:
    if not s.live:
        return _offline("keep_loaded")
    states = {n.name: n.state for n in s.nodes}
    out = []
    for m in s.models:
        if not m.keep_loaded:
            continue
        cold = [
            n
            for n in m.placed_on
            if states.get(n) == "up" and n in m.on_disk and n not in m.loaded
        ]
        if cold:
            out.append(
                Finding(
                    "keep_loaded",
                    "warning",
                    f"model {m.name} has keep_loaded but is not loaded on "
                    + ", ".join(cold),
                    "run `herd apply` to warm it, or check the node's memory",
                )
            )
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def memory(s: Snapshot) -> list[Finding]:
    if not s.live:
        return _offline("memory")
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
    return out + _no_agent("memory", "memory pressure and swap", without)


def disk(s: Snapshot) -> list[Finding]:
    if not s.live:
        return _offline("disk")
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
    return out + _no_agent("disk", "model store disk use", without)


def error_rate(s: Snapshot) -> list[Finding]:
    t = s.traces
    if t is None:
        return [
            Finding(
                "error_rate",
                "unknown",
                "error rate unknown: no traces database yet",
                "send some requests through the router",
            )
        ]
    if t.recent_total < ERROR_MIN_REQUESTS:
        return []
    rate = t.recent_errors / t.recent_total
    if rate <= ERROR_RATE_WARN:
        return []
    worst = f"; most from {t.worst}" if t.worst else ""
    return [
        Finding(
            "error_rate",
            "critical" if rate >= ERROR_RATE_CRIT else "warning",
            f"{rate:.0%} of {t.recent_total} requests failed in the last 5 "
            f"minutes{worst}",
            "`herd status` for node state; the router's log names each failure",
        )
    ]


def ttft(s: Snapshot) -> list[Finding]:
    if s.traces is None:
        return [
            Finding(
                "ttft",
                "unknown",
                "time to first token unknown: no traces database yet",
                "send some requests through the router",
            )
        ]
    out = []
    for f in s.traces.ttft:
        if (
            f.recent_p95_ms is None
            or f.baseline_p95_ms is None
            or f.recent_count < TTFT_MIN_RECENT
            or f.baseline_count < TTFT_MIN_BASELINE
            or f.baseline_p95_ms <= 0
        ):
            continue
        ratio = f.recent_p95_ms / f.baseline_p95_ms
        if ratio >= TTFT_RATIO:
            out.append(
                Finding(
                    "ttft",
                    "warning",
                    f"model {f.model}: p95 time to first token {f.recent_p95_ms:.0f} "
                    f"ms in the last 5 minutes, {ratio:.1f}x its 24 h baseline "
                    f"({f.baseline_p95_ms:.0f} ms)",
                    "check the queues and memory of its nodes; add replicas if "
                    "load has grown",
                )
            )
    return out


def queue(s: Snapshot) -> list[Finding]:
    if not s.live:
        return _offline("queue")
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


def trace_store(s: Snapshot) -> list[Finding]:
    t = s.traces
    if t is None:
        return []
    out = []
    if t.db_bytes >= TRACE_DB_WARN_BYTES:
        out.append(
            Finding(
                "trace_store",
                "warning",
                f"traces.db is {t.db_bytes / 1024**3:.1f} GB",
                "lower audit.retention_days in the manifest",
            )
        )
    limit = t.retention_days * 86400.0 + RETENTION_SLACK_S
    if t.oldest_age_s is not None and t.oldest_age_s > limit:
        out.append(
            Finding(
                "trace_store",
                "warning",
                f"traces.db holds rows {t.oldest_age_s / 86400:.0f} days old; "
                f"retention is {t.retention_days} days: pruning is overdue",
                "check the router's log for trace store errors and that it runs",
            )
        )
    if t.dropped or t.write_failures:
        out.append(
            Finding(
                "trace_store",
                "warning",
                f"traces dropped: {t.dropped or 0}, failed writes: "
                f"{t.write_failures or 0} (this router worker)",
                "check free space and permissions of the state directory",
            )
        )
    return out


def revision(s: Snapshot) -> list[Finding]:
    if s.revision_applied is None:
        return [
            Finding(
                "revision",
                "info",
                "no revision applied yet",
                "run `herd apply FILE`",
            )
        ]
    if s.revision_served is None:
        return [
            Finding(
                "revision",
                "unknown",
                f"revision {s.revision_applied} is applied; whether the router "
                "serves it is unknown (it did not answer)",
                "start the router",
            )
        ]
    if s.revision_served == s.revision_applied:
        return []
    age = s.applied_age_s
    if age is not None and age < RELOAD_GRACE_S and not s.reload_error:
        return []
    why = f": {s.reload_error}" if s.reload_error else ""
    return [
        Finding(
            "revision",
            "critical",
            f"revision {s.revision_applied} is applied but the router serves "
            f"{s.revision_served}{why}",
            "fix the manifest and `herd apply` it again, or `herd rollback`",
        )
    ]


def clock_skew(s: Snapshot) -> list[Finding]:
    if not s.live:
        return _offline("clock_skew")
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
    return out + _no_agent("clock_skew", "clock skew", without)


def bundle_store(s: Snapshot) -> list[Finding]:
    sc = s.scrub
    if sc is None:
        return [
            Finding(
                "bundle_store",
                "unknown",
                "bundle store not scrubbed yet",
                "the router scrubs it in the background; check again later",
            )
        ]
    out = []
    if sc.mismatches:
        out.append(
            Finding(
                "bundle_store",
                "critical",
                f"{len(sc.mismatches)} blob(s) in {sc.store} do not match their "
                f"digest: {', '.join(d[:19] for d in sc.mismatches[:3])}",
                "remove the bundle (`herd bundle remove`) and import it again "
                "from its signed media",
            )
        )
    if sc.missing:
        out.append(
            Finding(
                "bundle_store",
                "critical",
                f"{len(sc.missing)} blob(s) the catalog lists are missing from "
                f"{sc.store}",
                "import the bundle again from its signed media",
            )
        )
    if sc.last_tick_age_s is not None and sc.last_tick_age_s > SCRUB_STALLED_S:
        out.append(
            Finding(
                "bundle_store",
                "warning",
                f"bundle store scrub has not run for {sc.last_tick_age_s:.0f} s",
                "check that the router runs and its log for scrub errors",
            )
        )
    return out


#: Every check, in the order findings are listed.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("node_down", node_down),
    ("agent_silent", agent_silent),
    ("model_nowhere", model_nowhere),
    ("keep_loaded", keep_loaded),
    ("memory", memory),
    ("disk", disk),
    ("error_rate", error_rate),
    ("ttft", ttft),
    ("queue", queue),
    ("trace_store", trace_store),
    ("revision", revision),
    ("clock_skew", clock_skew),
    ("bundle_store", bundle_store),
)


def run(snapshot: Snapshot) -> dict[str, Any]:
    """Every check over `snapshot`: findings (worst first), passed check ids,
    counts per severity and the overall status."""
    findings: list[Finding] = []
    passed = []
    for check_id, check in CHECKS:
        found = list(check(snapshot))
        findings += found
        if not found:
            passed.append(check_id)
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    counts = {sev: sum(1 for f in findings if f.severity == sev) for sev in SEVERITIES}
    status = next((sev for sev in SEVERITIES if counts[sev]), "ok")
    return {
        "fleet": snapshot.fleet,
        "source": snapshot.source,
        "status": status,
        "counts": counts,
        "findings": [f.as_dict() for f in findings],
        "passed": passed,
    }
