"""The Ollama API (/api/*, /): inference forwarded to nodes, listings from the manifest.

`/api/tags` and `/api/ps` show the fleet as the manifest declares it (with
aliases), filtered to what the caller's client group may use, never whatever
some node happens to hold. Model management (pull, push, create, copy,
delete) is refused: it happens only through `herd apply`.
"""

from __future__ import annotations

from typing import Any

import falcon

from herd.digits import decimal
from herd.discovery.health import model_key
from herd.errors import Forbidden, InvalidRequest
from herd.manifest.model import Client, Fleet, Model, normalize_model_name
from herd.router.api.body import check_lowercase_keys
from herd.router.api.kinds import check_kind
from herd.router.convert import thinking
from herd.router.gate import decision_headers
from herd.router.policy import is_operator
from herd.router.routing import relay
from herd.router.routing.forward import Outcome, dumps
from herd.router.runtime import Runtime

#: Reported by /api/version until some node has answered.
COMPAT_VERSION = "0.12.0"
EPOCH = "1970-01-01T00:00:00Z"
NDJSON = "application/x-ndjson"


def allowed_models(fleet: Fleet, client: Client | None) -> list[Model]:
    if client is None or not client.models:
        return list(fleet.models)
    return [m for m in fleet.models if m.name in client.models]


def listed_names(model: Model) -> list[str]:
    """The model's name then its aliases, as /api/tags and /v1/models show them."""
    names = [model.name]
    for alias in model.aliases:
        name = normalize_model_name(alias)
        if name not in names:
            names.append(name)
    return names


def check_fields(body: dict[str, Any]) -> None:
    """Refuse a native body whose fields the router reads are mistyped or
    spelled so that the node would read other fields than the router does."""
    check_lowercase_keys(body)
    model, name, stream = body.get("model"), body.get("name"), body.get("stream")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("'name' must be a string", param="name")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false", param="stream")


#: Routes whose output cap is raised for thinking models (convert.thinking).
THINKING_PATHS = frozenset({"/api/chat", "/api/generate"})


def node_capabilities(rt: Runtime, fleet: Fleet, model: Model) -> list[str] | None:
    """The model's capabilities as a node lists them, if any node does."""
    for node in fleet.nodes_for(model):
        entry = rt.poller.get(node).details.get(model.name) or {}
        caps = entry.get("capabilities")
        if isinstance(caps, list):
            return caps
    return None


def think_budget(
    rt: Runtime,
    fleet: Fleet,
    models: tuple[Model, ...],
    native: dict[str, Any],
    resp: Any,
) -> bool:
    """Raise a thinking model's output cap in `native` (the first model's
    policy); True, and the X-Herd-Thinking-Budget header set, when it did."""
    if not models:
        return False
    model = models[0]
    budget = thinking.inflate(
        native, model, lambda: node_capabilities(rt, fleet, model)
    )
    if budget is None:
        return False
    resp.set_header(thinking.HEADER, budget.header())
    return True


class Forwarded:
    """POST /api/chat, /api/generate, /api/embed, /api/embeddings, /api/show."""

    def __init__(self, runtime: Runtime, path: str, streams: bool):
        self.rt = runtime
        self.path = path
        self.streams = streams

    def on_post(self, req: Any, resp: Any) -> None:
        rt = self.rt
        ctx = req.context
        fleet = ctx.served.fleet
        outcome: Outcome = ctx.outcome
        outcome.route = self.path
        body, raw = rt.read_json(req, fleet)
        check_fields(body)
        name = body.get("model") or body.get("name")
        outcome.requested_model = name if isinstance(name, str) else None
        extra = body.pop("fallback_models", None)
        if extra is not None or "model" not in body:
            raw = None
            body.pop("name", None)
        models = rt.models_for(fleet, ctx.client, name, extra)
        check_kind(self.path, models[0])
        rt.limiter.take(ctx.client)
        # Only an output cap in `options` can be raised (convert.thinking).
        if (
            "options" in body
            and self.path in THINKING_PATHS
            and think_budget(rt, fleet, models, body, resp)
        ):
            raw = None
        stream = self.streams and body.get("stream", True) is not False
        opened = rt.forwarder.open(
            fleet, self.path, body, models, stream=stream, outcome=outcome, raw=raw
        )
        decision_headers(resp, outcome, req)
        if opened.body is None:
            outcome.status = 200
            ctx.deferred = True
            resp.content_type = NDJSON
            resp.stream = relay.ndjson(
                opened, outcome, rt.finish, rt.deadline(fleet), rt.monotonic
            )
            return
        resp.status = opened.status
        resp.content_type = opened.content_type or falcon.MEDIA_JSON
        data = opened.body
        if opened.status == 200 and opened.first_obj is not None:
            outcome.counts(opened.first_obj)
            if self.path == "/api/show" and "model_info" not in opened.first_obj:
                data = dumps({**opened.first_obj, "model_info": {}})
        resp.data = data
        outcome.status = opened.status
        ctx.deferred = True
        rt.finish(opened, outcome, None if opened.status < 400 else "node_status")


class Tags:
    """GET /api/tags: the declared models (and aliases) this caller may use."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        fleet = req.context.served.fleet
        models = []
        for model in allowed_models(fleet, req.context.client):
            info = self._details(fleet, model)
            for name in listed_names(model):
                models.append(
                    {
                        "name": name,
                        "model": name,
                        "modified_at": info.get("modified_at") or EPOCH,
                        "size": info.get("size") or 0,
                        "digest": info.get("digest") or "",
                        "details": info.get("details") or {},
                    }
                )
        resp.data = dumps({"models": models})
        resp.content_type = falcon.MEDIA_JSON

    on_head = on_get

    def _details(self, fleet: Fleet, model: Model) -> dict[str, Any]:
        for node in fleet.nodes_for(model):
            entry = self.rt.poller.get(node).details.get(model.name)
            if entry:
                return dict(entry)
        return {}


class Ps:
    """GET /api/ps: declared models loaded on some node. Operator groups get
    one entry per node, naming it (`node`); other groups, to whom node names
    are fleet internals, one entry per loaded model, as from one Ollama."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        fleet = req.context.served.fleet
        operator = is_operator(req.context.client)
        out = []
        for model in allowed_models(fleet, req.context.client):
            for node in fleet.nodes_for(model):
                health = self.rt.poller.get(node)
                if not health.up:
                    continue
                for entry in health.ps:
                    key = model_key(str(entry.get("model") or entry.get("name") or ""))
                    if key == model.name:
                        named = {"name": model.name, "model": model.name}
                        if operator:
                            out.append({**entry, **named, "node": node.name})
                        elif not out or out[-1]["name"] != model.name:
                            out.append({**entry, **named})
        resp.data = dumps({"models": out})
        resp.content_type = falcon.MEDIA_JSON

    on_head = on_get


class Version:
    """GET /api/version: the oldest version among the up nodes."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        fleet = req.context.served.fleet
        versions = [
            h.version
            for h in (self.rt.poller.get(n) for n in fleet.nodes)
            if h.up and h.version
        ]
        version = min(versions, key=_version_key) if versions else COMPAT_VERSION
        resp.data = dumps({"version": version})
        resp.content_type = falcon.MEDIA_JSON

    on_head = on_get


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("-", 1)[0].split("."):
        parts.append(decimal(piece, 18) or 0)
    return tuple(parts)


class Root:
    """GET/HEAD /: what Ollama answers, so health checks written for Ollama work."""

    def on_get(self, req: Any, resp: Any) -> None:
        resp.content_type = "text/plain; charset=utf-8"
        resp.data = b"Ollama is running"

    on_head = on_get


class Managed:
    """Model management routes: refused (the manifest decides what nodes hold)."""

    def _refuse(self, req: Any, resp: Any, **params: Any) -> None:
        raise Forbidden(
            f"{req.path} is not available through herd: models are placed on "
            "nodes by `herd apply` of the fleet manifest"
        )

    on_get = on_post = on_put = on_delete = on_head = _refuse


MANAGED_PATHS = (
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/blobs/{digest}",
)
