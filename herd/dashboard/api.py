"""The dashboard's JSON: /dashboard/api/overview, /traffic and /audit.

Operator client groups only (router.clients[].operator), like /fleet/nodes:
these name nodes, addresses and users. /dashboard/api/health (the health
engine's findings) is herd.health.route. Every answer is computed from what
the router already knows (its node poller and queues) or read from SQLite in
gevent's thread pool and cached for a few seconds (herd.dashboard.cached),
so polling dashboards cost the router almost nothing and never block it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import falcon

from herd.dashboard.cached import Cached
from herd.dashboard.ledger import audit_view, bundle_catalog
from herd.dashboard.traffic import empty, traffic
from herd.health.gather import applied
from herd.reconcile import actions
from herd.reconcile.inventory import NodeInventory
from herd.router.api.fleet import models_view, nodes_view
from herd.router.policy import require_operator

PREFIX = "/dashboard/api"
#: How long each traffic window is reused: the day's 15-minute buckets change
#: slowly and cost more to read than the hour's.
TRAFFIC_TTL_S = {"hour": 5.0, "day": 60.0}
AUDIT_TTL_S = 5.0
CATALOG_TTL_S = 10.0

#: The headers of every dashboard answer (page, assets and JSON).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def admit(req: Any, resp: Any, what: str) -> None:
    """Headers first (so a refusal carries them too), then operators only."""
    resp.set_headers(SECURITY_HEADERS)
    resp.set_header("Cache-Control", "no-store")
    require_operator(req.context.client, what)


#: Strict JSON (what a browser's JSON.parse reads): ASCII, so a lone
#: surrogate is an escape, and no NaN or Infinity.
_strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode(body: Any) -> bytes:
    """`body` as strict JSON, a number that is not finite as null.

    The figures come from SQLite files (a REAL column holds Infinity as
    readily as 3.5) and the health checks' arithmetic on them; Python writes
    such a float as `Infinity`, which no browser parses, so the page would
    stop updating. Replaced only when the fast encode finds one.
    """
    try:
        return _strict(body).encode("ascii")
    except ValueError:
        return _strict(_finite(body)).encode("ascii")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def send_json(req: Any, resp: Any, body: Any, runtime: Any) -> None:
    """Answer an operator's poll with `body`, counted but not traced.

    A dashboard left open polls every few seconds: as trace rows and access
    log lines those polls would swamp the usage figures (`herd traces stats`,
    the group's request count) with the operator's own page. So an answered
    poll is counted in /metrics under its route, as every request is, and
    then marked recorded (`deferred`, as a stream's relay does), so the
    middleware writes no trace and no access log line for it. A refused or
    failed poll is traced like any other request.
    """
    resp.content_type = falcon.MEDIA_JSON
    resp.data = encode(body)
    ctx = req.context
    outcome = ctx.outcome
    outcome.route = req.uri_template or req.path
    outcome.status = 200
    outcome.finished = True
    ctx.deferred = True
    runtime.metrics.request(outcome, runtime.monotonic() - outcome.started)


def drift(runtime: Any, fleet: Any, catalog: tuple[dict, set]) -> dict[str, Any]:
    """What `herd plan` would do, from the router's own view of the nodes (the
    poller's last /api/tags and /api/ps) instead of asking every node again."""
    inventory = {}
    for node in fleet.nodes:
        health = runtime.poller.get(node)
        inventory[node.name] = NodeInventory(
            node.name,
            node.url,
            bool(health.up),
            error=health.last_error if not health.up else None,
            models={name: "" for name in health.on_disk},
            loaded=frozenset(health.loaded),
        )
    plan = actions.build(fleet, inventory, catalog[0], catalog[1])
    body = plan.as_json()
    body["changes"] = plan.changes
    body["unreachable"] = list(plan.unreachable)
    body["undeclared"] = sum(len(n.undeclared) for n in plan.nodes)
    body["in_sync"] = not plan.changes and not plan.errors and not plan.unreachable
    return body


class Dashboard:
    """The collaborators every dashboard resource reads."""

    def __init__(self, runtime: Any, state_dir: Path | None):
        self.rt = runtime
        self.state_dir = state_dir
        clock = runtime.clock
        if state_dir is None:
            nothing = Cached(lambda: empty(clock(), "no state directory"), 60)
            self.windows = {name: nothing for name in TRAFFIC_TTL_S}
            self.audit = nothing
            self.catalog: Cached[Any] = Cached(lambda: ({}, set()), 60)
        else:
            self.windows = {
                name: Cached(
                    lambda name=name: traffic(state_dir, clock(), (name,)), ttl_s
                )
                for name, ttl_s in TRAFFIC_TTL_S.items()
            }
            self.audit = Cached(lambda: audit_view(state_dir, clock()), AUDIT_TTL_S)
            self.catalog = Cached(lambda: bundle_catalog(state_dir), CATALOG_TTL_S)

    def traffic(self) -> dict[str, Any]:
        """Every window, each from its own cache (the newest answer's header)."""
        parts = [cached.get() for cached in self.windows.values()]
        body = dict(max(parts, key=lambda p: p["generated_at"]))
        if all(p.get("available") for p in parts):
            body["windows"] = {k: v for p in parts for k, v in p["windows"].items()}
        else:
            body = next(p for p in parts if not p.get("available"))
        return body

    def overview(self, served: Any) -> dict[str, Any]:
        rt = self.rt
        fleet = served.fleet
        now = rt.clock()
        revision, age = applied(self.state_dir, now)
        return {
            "generated_at": now,
            "fleet": fleet.name,
            "revision": {
                "served": served.revision,
                "sha256": served.sha256,
                "applied": revision,
                "applied_age_s": None if age is None else round(age, 1),
                "serves_applied": revision is not None and revision == served.revision,
                "reload_error": getattr(rt.source, "last_error", None),
            },
            "nodes": nodes_view(rt, fleet),
            "models": models_view(rt, fleet),
            "drift": drift(rt, fleet, self.catalog.get()),
            "requests": rt.stats.requests,
        }


class Overview:
    """GET /dashboard/api/overview: nodes, models, drift, revision."""

    def __init__(self, dashboard: Dashboard):
        self.d = dashboard

    def on_get(self, req: Any, resp: Any) -> None:
        admit(req, resp, req.path)
        send_json(req, resp, self.d.overview(req.context.served), self.d.rt)

    on_head = on_get


class Traffic:
    """GET /dashboard/api/traffic: series and usage for the last hour and day."""

    def __init__(self, dashboard: Dashboard):
        self.d = dashboard

    def on_get(self, req: Any, resp: Any) -> None:
        admit(req, resp, req.path)
        send_json(req, resp, self.d.traffic(), self.d.rt)

    on_head = on_get


class Audit:
    """GET /dashboard/api/audit: the newest audit events and the chain's state."""

    def __init__(self, dashboard: Dashboard):
        self.d = dashboard

    def on_get(self, req: Any, resp: Any) -> None:
        admit(req, resp, req.path)
        send_json(req, resp, self.d.audit.get(), self.d.rt)

    on_head = on_get
