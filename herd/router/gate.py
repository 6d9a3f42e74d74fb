"""The middleware every request passes: admission (client ACL, token) and its trace.

Before routing, the caller's source address and bearer token pick its client
group (or the request ends with 403/401); the revision serving it is pinned
for the whole request. After the response, one trace row is recorded, except
for streams, whose relay records the trace when the stream ends.
"""

from __future__ import annotations

from typing import Any

from herd.router.forward import Outcome
from herd.router.runtime import Runtime

#: Probes that load balancers and systemd use; no client group needed.
#: (/v2, the registry, also admits the fleet's own nodes by address.)
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class Gate:
    """Falcon middleware (process_request / process_response)."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime
        #: The app's route lookup (path -> match or None), set by create_app:
        #: a request refused before routing is still counted under its route.
        self.find_route: Any = None

    def process_request(self, req: Any, resp: Any) -> None:
        rt = self.rt
        rt.ensure_started()
        ctx = req.context
        ctx.deferred = False
        ctx.outcome = outcome = Outcome(
            t0=rt.clock(), started=rt.monotonic(), route=req.path, method=req.method
        )
        ctx.served = served = rt.served()
        if req.path in OPEN_PATHS:
            ctx.client = None
            return
        policy = rt.policy(served.fleet)
        if req.path.startswith("/v2") and req.remote_addr in policy.node_addresses:
            # Nodes pull model blobs from the registry; they need no client group.
            ctx.client = None
            outcome.client = "node"
            return
        client = policy.admit(req.remote_addr, req.get_header("Authorization"))
        ctx.client = client
        outcome.client = client.name

    def process_response(
        self, req: Any, resp: Any, resource: Any, req_succeeded: bool
    ) -> None:
        ctx = req.context
        outcome = getattr(ctx, "outcome", None)
        if outcome is None or getattr(ctx, "deferred", False):
            return
        if req.uri_template:
            outcome.route = req.uri_template
        elif resource is None:
            found = self.find_route(req.path) if self.find_route else None
            outcome.route = found[3] if found else "(unrouted)"
        outcome.status = int(str(resp.status).split(" ", 1)[0])
        if outcome.node is not None:
            _decision_headers(resp, outcome)
        self.rt.record(outcome)


def _decision_headers(resp: Any, outcome: Outcome) -> None:
    resp.set_header("X-Herd-Node", outcome.node or "")
    resp.set_header("X-Herd-Model", outcome.served_model or "")
    resp.set_header("X-Herd-Queue-Ms", f"{outcome.queue_ms or 0:.1f}")


def decision_headers(resp: Any, outcome: Outcome, req: Any = None) -> None:
    """Headers that explain a routing decision (set before a stream starts).

    A request with `X-Herd-Explain: 1` also gets `X-Herd-Decision`: every
    candidate node with its score and why (or why it was left out).
    """
    _decision_headers(resp, outcome)
    if req is not None and req.get_header("X-Herd-Explain") == "1":
        text = " | ".join(f"{d.model}: {d.explain()}" for d in outcome.decisions)
        resp.set_header("X-Herd-Decision", text.encode("ascii", "replace").decode())
