"""The middleware every request passes: admission (client ACL, token) and its trace.

Before routing, a Host the router is not known by ends the request with 421
(DNS rebinding: herd.router.hostnames); then the caller's source address
(normalized once, here: see herd.router.http.peer) and bearer token pick its
client group (or the request ends with 403/401); the registry (/v2) answers the
fleet's nodes only. The revision serving it is pinned for the whole request.
After the response, one trace row is recorded, except for streams, whose relay
records the trace when the stream ends.
"""

from __future__ import annotations

from typing import Any

from herd.errors import InvalidRequest, MisdirectedHost, RegistryDenied
from herd.router.hostnames import HostCheck
from herd.router.http.peer import peer_address
from herd.router.observe import tags
from herd.router.policy import is_operator
from herd.router.routing.forward import Outcome
from herd.router.routing.scoring import parse_prefer
from herd.router.runtime import Runtime

#: Probes that load balancers and systemd use; no client group needed.
#: (/v2, the registry, also admits the fleet's own nodes by address.)
#: /fleet/heartbeat is signed and admits by its own rules (herd.router.api.heartbeat).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/fleet/heartbeat"})


class Gate:
    """Falcon middleware (process_request / process_response)."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime
        #: The app's route lookup (path -> match or None), set by create_app:
        #: a request refused before routing is still counted under its route.
        self.find_route: Any = None
        self.hosts = HostCheck()

    def process_request(self, req: Any, resp: Any) -> None:
        rt = self.rt
        if rt.starting:
            rt.ensure_started()
        ctx = req.context
        ctx.deferred = False
        # Headers and the address are read from the environ: a dict lookup
        # each, where falcon's properties and get_header cost a call first.
        env = req.env
        ctx.peer = peer = peer_address(env.get("REMOTE_ADDR", "127.0.0.1"))
        path = req.path
        # Positional, the peer set after: keywords reach a dataclass's
        # __init__ through a dict, a third of the cost of making one.
        ctx.outcome = outcome = Outcome(rt.clock(), rt.monotonic(), path, req.method)
        outcome.peer = peer
        ctx.served = served = rt.served()
        ctx.client = None
        host = env.get("HTTP_HOST")
        if not self.hosts.allows(served.fleet, host):
            raise MisdirectedHost(_misdirected(host))
        if path in OPEN_PATHS:
            return
        policy = rt.policy(served.fleet)
        if path == "/v2" or path.startswith("/v2/"):
            # Nodes pull model weights from the registry; nobody else may.
            if not policy.may_pull(peer):
                raise RegistryDenied(
                    f"the registry serves the fleet's nodes only; {peer} is not "
                    "the address of a node"
                )
            outcome.client = "node"
            return
        client = policy.admit(peer, env.get("HTTP_AUTHORIZATION"))
        ctx.client = client
        outcome.client = client.name
        prefer = env.get("HTTP_X_HERD_PREFER")
        if prefer:
            try:
                outcome.prefer = parse_prefer(prefer)
            except ValueError as ex:
                raise InvalidRequest(str(ex)) from ex
        header = env.get(tags.WSGI_HEADER)
        if header is not None:
            ctx.tags = tags.from_header(header)
            outcome.tags = tags.joined(ctx.tags)

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
            _decision_headers(resp, outcome, is_operator(ctx.client))
        self.rt.record(outcome)


def _misdirected(host: str) -> str:
    return (
        f"this router does not answer to the host {host[:100]!r}: use its address "
        "or a name listed in router.hostnames of the manifest"
    )


def _decision_headers(resp: Any, outcome: Outcome, operator: bool) -> None:
    # Node names are fleet internals: operator groups only, like node
    # addresses, error details and X-Herd-Decision. Every group may see
    # which model answered and how long it queued.
    set_header = resp.set_header
    if operator:
        set_header("X-Herd-Node", outcome.node or "")
    set_header("X-Herd-Model", outcome.served_model or "")
    queue_ms = outcome.queue_ms
    set_header("X-Herd-Queue-Ms", f"{queue_ms:.1f}" if queue_ms else "0.0")


def decision_headers(resp: Any, outcome: Outcome, req: Any = None) -> None:
    """Headers that explain a routing decision (set before a stream starts).

    A request with `X-Herd-Explain: 1` from an operator group also gets
    `X-Herd-Decision`: every candidate node with its score and why (or why it
    was left out).
    """
    operator = req is not None and is_operator(req.context.client)
    _decision_headers(resp, outcome, operator)
    # Always explained when memory fit decided (a node left out or pushed down),
    # but only to operator groups: the explanation names nodes.
    if operator and (
        req.get_header("X-Herd-Explain") == "1"
        or any(d.memory_decided for d in outcome.decisions)
    ):
        text = " | ".join(f"{d.model}: {d.explain()}" for d in outcome.decisions)
        resp.set_header("X-Herd-Decision", text.encode("ascii", "replace").decode())
