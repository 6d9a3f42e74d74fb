"""/fleet/status and /fleet/nodes: the fleet's live state as JSON.

Also used by `herd status`: the manifest's view (where each model should be)
next to what the nodes report (where it is, loaded or not), so drift shows.
"""

from __future__ import annotations

from typing import Any

import falcon

from herd.manifest.model import Fleet
from herd.router.forward import dumps
from herd.router.runtime import Runtime


def nodes_view(runtime: Runtime, fleet: Fleet) -> list[dict[str, Any]]:
    declared = {m.name for m in fleet.models}
    out = []
    for node in fleet.nodes:
        state = runtime.poller.get(node)
        health = state.as_dict()
        health.update(
            # On the node but not declared by the manifest: drift to clean up.
            unmanaged_models=sorted(state.on_disk - declared),
            labels=dict(node.labels),
            max_concurrency=node.max_concurrency,
            in_flight=runtime.queues.in_flight(node.name),
            waiting=runtime.queues.waiting(node.name),
            error_rate=round(runtime.stats.error_rate(node.name), 3),
        )
        health.update(discovery_view(runtime, fleet, node))
        out.append(health)
    return out


def discovery_view(runtime: Runtime, fleet: Fleet, node: Any) -> dict[str, Any]:
    """How a node was found and admitted, and what its agent last reported."""
    member_of = getattr(runtime.poller, "member", None)
    member = member_of(node) if member_of else None
    static = getattr(runtime.source, "static", None)
    is_static = static is None or static().fleet.node(node.name) is not None
    if member is None:
        return {"found": "static", "admission": "declared in the manifest"}
    view = {
        "found": f"static+agent ({member.via})" if is_static else member.via,
        "admission": "declared in the manifest"
        if is_static
        else f"signed heartbeat from {member.address}",
        "agent": {
            "name": member.name,
            "address": member.address,
            "heartbeat_age_s": round(max(0.0, runtime.clock() - member.last_seen), 1),
            "interval_s": member.interval_s,
            "joined": member.first_seen,
            "ollama_error": member.ollama_error,
        },
        "metrics": dict(member.metrics),
    }
    return view


def discovery_status(runtime: Runtime) -> dict[str, Any]:
    """Refused heartbeats (latest first) for `herd status`."""
    membership = getattr(runtime.source, "membership", None)
    if membership is None:
        return {}
    fleet = runtime.source.static().fleet
    return {
        "mdns": fleet.discovery.mdns_enabled,
        "candidates": membership.candidates(),
        "refused": membership.refusals(20),
    }


def models_view(runtime: Runtime, fleet: Fleet) -> list[dict[str, Any]]:
    out = []
    for model in fleet.models:
        placed = [n.name for n in fleet.nodes_for(model)]
        on_disk, loaded, missing = [], [], []
        for node in fleet.nodes_for(model):
            health = runtime.poller.get(node)
            if model.name in health.loaded:
                loaded.append(node.name)
            if model.name in health.on_disk:
                on_disk.append(node.name)
            elif health.up:
                missing.append(node.name)
        out.append(
            {
                "name": model.name,
                "aliases": list(model.aliases),
                "fallbacks": list(model.fallbacks),
                "placed_on": placed,
                "on_disk": on_disk,
                "loaded": loaded,
                "missing_on": missing,
            }
        )
    return out


def status(runtime: Runtime) -> dict[str, Any]:
    served = runtime.served()
    fleet = served.fleet
    nodes = nodes_view(runtime, fleet)
    return {
        "fleet": fleet.name,
        "revision": served.revision,
        "sha256": served.sha256,
        "reload_error": getattr(runtime.source, "last_error", None),
        "nodes_up": sum(1 for n in nodes if n["state"] == "up"),
        "nodes": nodes,
        "models": models_view(runtime, fleet),
        "discovery": discovery_status(runtime),
        "requests": runtime.stats.requests,
        "upstream_failures": runtime.stats.failures,
        "traces": {
            "written": runtime.traces.written,
            "pending": runtime.traces.pending,
            "dropped": runtime.traces.dropped,
            "write_failures": runtime.traces.write_failures,
            "write_error": runtime.traces.write_error,
        },
    }


class Status:
    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(status(self.rt))


class Nodes:
    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps({"nodes": nodes_view(self.rt, req.context.served.fleet)})
