"""/fleet/status and /fleet/nodes: the fleet's live state as JSON.

Field names Ollama Herd documents are there too, so scripts written for it
keep working: `fleet.nodes_online`, `nodes[].node_id`, `nodes[].models_loaded`.
Also used by `herd status`: the manifest's view (where each model should be)
next to what the nodes report (where it is, loaded or not), so drift shows.
That full view is for operator client groups (`router.clients[].operator`);
any other group's /fleet/status shows only the models it may use, whether
each is available, and how many nodes are up: no node names, URLs or
addresses, no reload errors. /fleet/nodes is for operators only.
"""

from __future__ import annotations

from typing import Any

import falcon

from herd.discovery.roster import disk_free_of
from herd.manifest.model import Client, Fleet
from herd.reconcile.inventory import NodeInventory
from herd.reconcile.placement import choose
from herd.router.api.ollama import allowed_models
from herd.router.policy import is_operator, require_operator
from herd.router.reload import Served
from herd.router.routing.forward import dumps
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
        return {
            "found": "static",
            "admission": "declared in the manifest",
            "disk_free_bytes": None,
        }
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
        # Where the node's Ollama keeps models (replica choice prefers room).
        "disk_free_bytes": disk_free_of(member.metrics),
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
    """Per model: where the manifest places it (`replicas` resolved as `herd
    apply` does), where it is, and the drift between the two."""
    health = {n.name: runtime.poller.get(n) for n in fleet.nodes}
    member_of = getattr(runtime.poller, "member", None)
    held = {}
    for node in fleet.nodes:
        h = health[node.name]
        member = member_of(node) if member_of else None
        held[node.name] = NodeInventory(
            node.name,
            h.url,
            bool(h.up),
            models={k: "" for k in h.on_disk},
            # Free disk as the node's agent reports it (as `herd plan` ranks).
            free_bytes=disk_free_of(member.metrics) if member else None,
        )
    out = []
    for model in fleet.models:
        candidates = fleet.nodes_for(model)
        placed = choose(model, candidates, held)
        on_disk, loaded, missing = [], [], []
        for node in candidates:
            state = health[node.name]
            if model.name in state.loaded:
                loaded.append(node.name)
            if model.name in state.on_disk:
                on_disk.append(node.name)
            elif state.up and node in placed:
                missing.append(node.name)
        out.append(
            {
                "name": model.name,
                "aliases": list(model.aliases),
                "fallbacks": list(model.fallbacks),
                "replicas": model.place.replicas,
                "placed_on": [n.name for n in placed],
                "on_disk": on_disk,
                "loaded": loaded,
                "missing_on": missing,
                # Holds it though the manifest places it elsewhere (--prune).
                "extra_on": [
                    name
                    for name, state in health.items()
                    if model.name in state.on_disk
                    and name not in {p.name for p in placed}
                ],
            }
        )
    return out


def status(runtime: Runtime, served: Served | None = None) -> dict[str, Any]:
    """The whole fleet's state: what operator groups see."""
    served = served or runtime.served()
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
        "operator": True,
        "reload_error": getattr(runtime.source, "last_error", None),
        "nodes_up": nodes_up,
        "nodes": nodes,
        "models": models_view(runtime, fleet),
        "discovery": discovery_status(runtime),
        "requests": runtime.stats.requests,
        "upstream_failures": runtime.stats.failures,
        "traces": {
            **runtime.shared_counts(),
            "write_error": runtime.traces.write_error,
        },
    }


def client_status(
    runtime: Runtime, served: Served, client: Client | None
) -> dict[str, Any]:
    """What a group that is not an operator sees: its own models, each with
    whether some node is up to serve it, and how many nodes are up."""
    fleet = served.fleet
    allowed = allowed_models(fleet, client)
    names = {m.name for m in allowed}
    up = sum(1 for n in fleet.nodes if runtime.poller.get(n).up)
    models = []
    for model in allowed:
        health = [runtime.poller.get(n) for n in fleet.nodes_for(model)]
        models.append(
            {
                "name": model.name,
                "aliases": list(model.aliases),
                "fallbacks": [f for f in model.fallbacks if f in names],
                "available": any(h.up for h in health),
                "loaded": any(h.up and model.name in h.loaded for h in health),
            }
        )
    return {
        "fleet": {"name": fleet.name, "nodes_online": up},
        "revision": served.revision,
        "sha256": served.sha256,
        "operator": False,
        "client": client.name if client is not None else None,
        "nodes_up": up,
        "models": models,
    }


class Status:
    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        ctx = req.context
        if is_operator(ctx.client):
            body = status(self.rt, ctx.served)
        else:
            body = client_status(self.rt, ctx.served, ctx.client)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(body)

    on_head = on_get


class Nodes:
    """GET /fleet/nodes: every node's health (operator groups only)."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        require_operator(req.context.client, "/fleet/nodes")
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps({"nodes": nodes_view(self.rt, req.context.served.fleet)})

    on_head = on_get
