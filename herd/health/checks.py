"""Health checks: pure functions from a `Snapshot` to findings.

Each check has an id and returns findings, each with a severity (critical,
warning, info or unknown), a one-line finding and a suggested action. A check
that has nothing to report returns no finding and counts as passed. A check
whose facts are missing (no router to ask, no `herd node` agent on a node)
reports "unknown": never a pass it could not verify. The checks about nodes
are in herd.health.nodechecks; this module has the rest and `run`.
"""

from __future__ import annotations

from typing import Any

from herd.health.finding import SEVERITIES, Check, Finding, offline, unknown
from herd.health.nodechecks import (
    agent_silent,
    clock_skew,
    disk,
    memory,
    node_down,
    queue,
)
from herd.health.snapshot import Snapshot

#: Error rate over the last 5 minutes, and the fewest requests it is judged on.
ERROR_RATE_WARN, ERROR_RATE_CRIT, ERROR_MIN_REQUESTS = 0.05, 0.25, 20
#: p95 TTFT ratio against the 24 h baseline, and the fewest samples for each.
TTFT_RATIO, TTFT_MIN_RECENT, TTFT_MIN_BASELINE = 2.0, 10, 50
#: traces.db size that deserves a look, and the slack on retention pruning
#: (rows are pruned hourly; older than retention plus this means it stopped).
TRACE_DB_WARN_BYTES = 2 * 1024**3
RETENTION_SLACK_S = 2 * 86400.0
#: Seconds a revision may be applied and not served (the router checks twice
#: a second) before it is a finding.
RELOAD_GRACE_S = 10.0
#: Seconds without scrub progress before the scrub counts as stalled.
SCRUB_STALLED_S = 3600.0


def model_nowhere(s: Snapshot) -> list[Finding]:
    if not s.live:
        return unknown(
            "model_nowhere",
            "which node holds which model is unknown: the router did not answer",
            "start the router, then run `herd health` again",
        )
    states = {n.name: n.state for n in s.nodes}
    out = []
    for m in s.models:
        if m.on_disk:
            continue
        down = [n for n in m.placed_on if states.get(n) != "up"]
        if down or not m.placed_on:
            why = (
                f"its nodes ({', '.join(down)}) are not up"
                if down
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
        return offline("keep_loaded")
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


def error_rate(s: Snapshot) -> list[Finding]:
    t = s.traces
    if t is None:
        return unknown(
            "error_rate",
            "error rate unknown: no traces database yet",
            "send some requests through the router",
        )
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
        return unknown(
            "ttft",
            "time to first token unknown: no traces database yet",
            "send some requests through the router",
        )
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
        return unknown(
            "revision",
            f"revision {s.revision_applied} is applied; whether the router "
            "serves it is unknown (it did not answer)",
            "start the router",
        )
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


def bundle_store(s: Snapshot) -> list[Finding]:
    sc = s.scrub
    if sc is None:
        return unknown(
            "bundle_store",
            "bundle store not scrubbed yet",
            "the router scrubs it in the background; check again later",
        )
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


def ha_peer(s: Snapshot) -> list[Finding]:
    """The routers of a keepalived pair serve the same revision, and answer."""
    out = []
    for address, digest in s.ha_peers or ():
        if digest is None:
            out.append(
                Finding(
                    "ha_peer",
                    "warning",
                    f"peer router {address} did not answer /fleet/status: a "
                    "failover to it may find no router",
                    "start the router there, and put this router's address in a "
                    "client group of the manifest",
                )
            )
        elif s.sha256_served is not None and digest != s.sha256_served:
            out.append(
                Finding(
                    "ha_peer",
                    "critical",
                    f"peer router {address} serves another manifest (sha256 "
                    f"{digest[:12]}, this router {s.sha256_served[:12]}): clients "
                    "see a different fleet after a failover",
                    "apply the same manifest on both routers (`herd apply FILE`)",
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
    ("ha_peer", ha_peer),
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
