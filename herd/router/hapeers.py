"""The other routers of a keepalived pair: which manifest revision each serves.

Both routers must serve the same manifest, or clients see a different fleet
after a failover. Each peer's /fleet/status (any client group sees `sha256`,
the digest of the revision it serves) is asked at its address from
`router.ha.peers` on the port of `router.listen`: IP addresses only, no DNS,
no proxy, a short timeout. Used by `herd status` and the health engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from herd.manifest.keepalived import own_address
from herd.manifest.model import Fleet

Fetch = Callable[[str, str | None], dict[str, Any] | None]


@dataclass(frozen=True)
class PeerState:
    address: str
    url: str
    #: None: the peer did not answer (down, or it does not admit this host).
    sha256: str | None
    revision: int | None

    def matches(self, digest: str | None) -> bool | None:
        if self.sha256 is None or digest is None:
            return None
        return self.sha256 == digest

    def as_dict(self, digest: str | None) -> dict[str, Any]:
        return {**asdict(self), "same_revision": self.matches(digest)}


def peer_urls(fleet: Fleet) -> list[tuple[str, str]]:
    """(address, URL) of every other router in `router.ha.peers`."""
    ha = fleet.router.ha
    if ha is None:
        return []
    me = own_address(ha)
    port = fleet.router.listen.rpartition(":")[2]
    return [(a, f"http://{a}:{port}") for a in ha.peers if a != me]


def peer_states(fleet: Fleet, token: str | None, fetch: Fetch) -> list[PeerState]:
    """Ask every peer for its /fleet/status (through `fetch`, which times out)."""
    out = []
    for address, url in peer_urls(fleet):
        live = fetch(url, token)
        live = live if isinstance(live, dict) else {}
        digest = live.get("sha256")
        out.append(
            PeerState(
                address,
                url,
                digest if isinstance(digest, str) else None,
                live.get("revision") if isinstance(live.get("revision"), int) else None,
            )
        )
    return out


def lines(states: list[PeerState], digest: str | None) -> list[str]:
    """`herd status` text: one line per peer, a mismatch called out."""
    out = []
    for p in states:
        if p.sha256 is None:
            out.append(
                f"peer router {p.address}: did not answer {p.url}/fleet/status "
                "(down, or this host is in none of its client groups)"
            )
        elif p.matches(digest) is False:
            mine = digest[:12] if digest else "?"
            out.append(
                f"peer router {p.address}: MISMATCH: serves revision {p.revision} "
                f"(sha256 {p.sha256[:12]}), this router {mine}: apply the same "
                "manifest on both routers"
            )
        else:
            out.append(
                f"peer router {p.address}: revision {p.revision} "
                f"(sha256 {p.sha256[:12]}), same manifest"
            )
    return out
