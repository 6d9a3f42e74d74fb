"""/fleet/status and /fleet/nodes: the fleet's live state as JSON.

Field names Ollama Herd documents are there too, so scripts written for it
keep working: `fleet.nodes_online`, `nodes[].node_id`, `nodes[].models_loaded`.
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
            # Ollama Herd's name for a node (`name` here).
            node_id=node.name,
            # On the node but not declared by the manifest: drift to clean up.
            unmanaged_models=sorted(state.on_disk - declared),
            labels=dict(node.labels),
            max_concurrency=node.max_concurrency,
            in_flight=runtime.queues.in_flight(node.name),
            waiting=runtime.queues.waiting(node.name),
            error_rate=round(runtime.stats.error_rate(node.name), 3),
        )
        out.append(health)
    return out


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
    nodes_up = sum(1 for n in nodes if n["state"] == "up")
    return {
        # An object, as Ollama Herd's /fleet/status has it (scripts written for
        # it read fleet.nodes_online); the fleet's name is fleet.name.
        "fleet": {
            "name": fleet.name,
            "nodes_online": nodes_up,
            "nodes_total": len(nodes),
        },
        "revision": served.revision,
        "sha256": served.sha256,
        "reload_error": getattr(runtime.source, "last_error", None),
        "nodes_up": nodes_up,
        "nodes": nodes,
        "models": models_view(runtime, fleet),
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
