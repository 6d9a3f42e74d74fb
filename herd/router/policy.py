"""Who may call the router, for which models, how often (manifest `router.clients`).

Every request is admitted by source address (the first client group whose
networks contain it); a group with `token_sha256` also needs an
`Authorization: Bearer` token hashing to it (compared in constant time). When
several groups admit an address, a presented token picks the group it matches.
Groups may be limited to a list of models and to a token-bucket rate. Only
groups marked `operator` see the fleet's internals (node names, URLs and
addresses, every model, reload errors). The registry (/v2) answers node
addresses only, never a client group.

Addresses reaching this module are normalized first (herd.router.http.peer).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import Callable
from urllib.parse import urlsplit

from herd import hosts
from herd.errors import Forbidden, ModelNotAllowed, RateLimited, Unauthorized
from herd.manifest.model import Client, Fleet, Model
from herd.router.fleetstate import FleetState
from herd.router.http.peer import peer_address

_CACHE_MAX = 4096


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer X` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Policy:
    """The admission rules of one manifest revision (built once per reload)."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self._by_address: dict[str, tuple[Client, ...]] = {}
        #: Node IP addresses (from node URLs, normalized): they may pull from
        #: the registry.
        self.node_addresses = frozenset(_node_addresses(fleet))
        #: The other routers of a keepalived pair (router.ha.peers) copy
        #: bundles from this one's registry (`herd bundle import --from-peer`).
        ha = fleet.router.ha
        self.peer_routers = frozenset(
            peer_address(a) for a in (ha.peers if ha is not None else ())
        )

    def may_pull(self, peer: str) -> bool:
        """Whether `peer` (a normalized address) may read the registry (/v2).

        Only the fleet's nodes pull model weights, so only their addresses
        may; a client group never may, whatever models it is allowed. Nodes
        admitted some other way (discovery) are added here, in one place. The
        other routers of a keepalived pair may too: they hold the same bundles.
        """
        return peer in self.node_addresses or peer in self.peer_routers

    def _groups(self, remote_addr: str) -> tuple[Client, ...]:
        groups = self._by_address.get(remote_addr)
        if groups is None:
            try:
                address = ipaddress.ip_address(peer_address(remote_addr))
            except ValueError:
                return ()
            groups = tuple(c for c in self.fleet.router.clients if c.admits(address))
            if len(self._by_address) >= _CACHE_MAX:
                self._by_address.clear()
            self._by_address[remote_addr] = groups
        return groups

    def admit(self, remote_addr: str, authorization: str | None) -> Client:
        """The client group of this caller; raises Forbidden or Unauthorized."""
        groups = self._groups(remote_addr or "")
        if not groups:
            raise Forbidden(f"address {remote_addr} is not in any client group")
        token = bearer_token(authorization) if authorization else None
        if token is not None:
            digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
            for group in groups:
                if group.token_sha256 and hmac.compare_digest(
                    digest, group.token_sha256.lower()
                ):
                    return group
        for group in groups:
            if not group.token_sha256:
                return group
        if token is None:
            raise Unauthorized(
                f"client group {groups[0].name} requires an Authorization: Bearer token"
            )
        raise Unauthorized("the bearer token does not match this client group")

    @staticmethod
    def check_model(client: Client, model: Model) -> None:
        """Raise ModelNotAllowed unless `client` may use `model`."""
        if client.models and model.name not in client.models:
            raise ModelNotAllowed(
                f"client group {client.name} may not use model {model.name}"
            )


def is_operator(client: Client | None) -> bool:
    """Whether `client` may see fleet internals (manifest `operator: true`)."""
    return client is not None and client.operator


def require_operator(client: Client | None, what: str) -> None:
    """Raise Forbidden unless `client` is an operator group."""
    if not is_operator(client):
        name = client.name if client is not None else "this caller"
        raise Forbidden(
            f"{what} is for operator client groups only (router.clients[].operator "
            f"in the manifest); client group {name} is not one"
        )


def _node_addresses(fleet: Fleet) -> list[str]:
    """Every address a node's URL names: the IP literal, or each address
    /etc/hosts lists for its name (read when the revision is loaded; herd
    never asks DNS)."""
    out = []
    for node in fleet.nodes:
        host = urlsplit(node.url).hostname or ""
        address = hosts.literal(host)
        listed = (address,) if address else hosts.hosts_table().get(host.lower())
        out += [peer_address(a) for a in listed or ()]
    return out


class RateLimiter:
    """Token buckets per client group, fleet-wide: the buckets live in the
    shared fleet state (herd.router.fleetstate), so a group's rate holds
    across every worker. State survives manifest reloads; a changed rate
    starts a full bucket."""

    def __init__(self, clock: Callable[[], float], state: FleetState | None = None):
        self._clock = clock
        self._state = state if state is not None else FleetState()

    def take(self, client: Client) -> None:
        """Spend one token of `client`'s bucket or raise RateLimited."""
        rate = client.rate_limit
        if rate is None:
            return
        left = self._state.spend(
            client.name, self._clock(), rate.requests_per_minute, float(rate.burst)
        )
        if left is None:
            return
        per_second = rate.requests_per_minute / 60.0
        wait = (1.0 - left) / per_second if per_second > 0 else 60.0
        raise RateLimited(
            f"client group {client.name} is over its rate limit of "
            f"{rate.requests_per_minute} requests per minute",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
