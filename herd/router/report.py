"""`herd status`: the fleet's state from the running router, or the manifest's view.

The running router's /fleet/status is asked first (on the manifest's
`router.listen`, loopback when it listens on every address); when it does not
answer, the report shows what the manifest declares with every node
"unknown", and says so.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from herd.manifest.model import Fleet

TIMEOUT_S = 2.0


def local_url(listen: str) -> str:
    """An http:// URL this host can use to reach a router bound to `listen`."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"http://{host}:{port}"


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_live(url: str, token: str | None = None) -> dict[str, Any] | None:
    """The router's /fleet/status, or None when it is not reachable."""
    request = urllib.request.Request(url.rstrip("/") + "/fleet/status")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        # Straight to the router, never through an http_proxy from the env.
        with _DIRECT.open(request, timeout=TIMEOUT_S) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def manifest_view(fleet: Fleet, revision: int | None) -> dict[str, Any]:
    """The same shape as /fleet/status, from the manifest alone."""
    return {
        "fleet": {
            "name": fleet.name,
            "nodes_online": None,
            "nodes_total": len(fleet.nodes),
        },
        "revision": revision,
        "source": "manifest (router not reachable)",
        "nodes": [
            {
                "name": n.name,
                "node_id": n.name,
                "url": n.url,
                "state": "unknown",
                "version": None,
                "in_flight": None,
                "max_concurrency": n.max_concurrency,
                "models_loaded": [],
                "models_on_disk": [],
            }
            for n in fleet.nodes
        ],
        "models": [
            {
                "name": m.name,
                "aliases": list(m.aliases),
                "fallbacks": list(m.fallbacks),
                "placed_on": [n.name for n in fleet.nodes_for(m)],
                "on_disk": [],
                "loaded": [],
                "missing_on": [],
            }
            for m in fleet.models
        ],
    }


def fleet_name(report: dict[str, Any]) -> Any:
    """`fleet.name` (`fleet` was the name itself before it became an object)."""
    fleet = report.get("fleet")
    return fleet.get("name") if isinstance(fleet, dict) else fleet


def render(report: dict[str, Any]) -> str:
    """A plain-text table of nodes and models, with drift called out."""
    if "nodes" not in report:
        return _render_client(report)
    name = fleet_name(report)
    lines = [
        f"fleet {name}  revision {report.get('revision')}  "
        f"({report.get('source', 'live router')})",
        "",
        f"{'NODE':<16} {'STATE':<8} {'VERSION':<10} {'BUSY':<7} {'LOADED':<30} URL",
    ]
    for n in report.get("nodes", []):
        busy = (
            "-"
            if n.get("in_flight") is None
            else f"{n['in_flight']}/{n.get('max_concurrency')}"
        )
        lines.append(
            f"{n['name']:<16} {n.get('state', '?'):<8} {n.get('version') or '-':<10} "
            f"{busy:<7} {','.join(n.get('models_loaded') or []) or '-':<30} {n['url']}"
        )
    lines += ["", f"{'MODEL':<28} {'PLACED ON':<24} {'ON DISK':<24} DRIFT"]
    for m in report.get("models", []):
        drift = (
            "; ".join(
                f"{label} " + ",".join(m[key])
                for key, label in (
                    ("missing_on", "missing on"),
                    ("extra_on", "extra on"),
                )
                if m.get(key)
            )
            or "-"
        )
        lines.append(
            f"{m['name']:<28} {','.join(m['placed_on']) or '-':<24} "
            f"{','.join(m.get('on_disk') or []) or '-':<24} {drift}"
        )
    for n in report.get("nodes", []):
        if n.get("unmanaged_models"):
            lines.append(
                f"node {n['name']} holds models the manifest does not declare: "
                + ", ".join(n["unmanaged_models"])
            )
    lines += discovery_lines(report)
    if report.get("reload_error"):
        lines += ["", f"last manifest reload refused: {report['reload_error']}"]
    return "\n".join(lines)


def _render_client(report: dict[str, Any]) -> str:
    """The view of a client group that is not an operator: its models only."""
    lines = [
        f"fleet {fleet_name(report)}  revision {report.get('revision')}  "
        f"({report.get('source', 'live router')})",
        f"client group {report.get('client')}: not an operator group, so node "
        "details are not shown (router.clients[].operator in the manifest)",
        f"nodes up: {report.get('nodes_up')}",
        "",
        f"{'MODEL':<28} {'AVAILABLE':<10} LOADED",
    ]
    for m in report.get("models", []):
        lines.append(
            f"{m['name']:<28} {'yes' if m.get('available') else 'no':<10} "
            f"{'yes' if m.get('loaded') else 'no'}"
        )
    return "\n".join(lines)


def discovery_lines(report: dict[str, Any]) -> list[str]:
    """How each node was found and admitted, what its agent reports, and the
    agents announced or refused but not admitted."""
    lines = [
        "",
        f"{'NODE':<16} {'FOUND':<22} {'HEARTBEAT':<10} {'MEMORY FREE':<12} ADMISSION",
    ]
    for n in report.get("nodes", []):
        agent = n.get("agent") or {}
        age = agent.get("heartbeat_age_s")
        memory = ((n.get("metrics") or {}).get("memory") or {}).get("available")
        lines.append(
            f"{n['name']:<16} {n.get('found', 'static'):<22} "
            f"{'-' if age is None else f'{age:g}s ago':<10} "
            f"{'-' if memory is None else f'{memory / 1024**3:.1f} GB':<12} "
            f"{n.get('admission', 'declared in the manifest')}"
        )
    discovery = report.get("discovery") or {}
    waiting = [c for c in discovery.get("candidates", []) if not c.get("admitted")]
    for c in waiting:
        lines.append(
            f"announced over mDNS, not admitted: {c['name']} "
            f"({','.join(c.get('addresses') or []) or '?'}:{c.get('port')})"
        )
    for row in discovery.get("refused", [])[:10]:
        lines.append(
            f"heartbeat refused ({row['status']}): {row.get('name') or '-'} from "
            f"{row.get('address')}: {row['reason']}"
        )
    return lines
