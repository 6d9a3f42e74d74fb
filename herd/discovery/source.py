"""The fleet the router serves: the manifest's nodes plus admitted agents.

`DiscoveredSource` wraps the manifest source (herd.router.reload) and hands the
router a `Fleet` whose `nodes` are the static nodes followed by every live
discovered node, with the labels and max_concurrency `discovery.mdns.defaults`
and per-name overrides give it; placements by label then cover discovered
nodes like any other. The merged fleet is rebuilt only when the revision or
the set of members changes (never per heartbeat), and listeners (queues, node
allow-list, policy) hear about it like a new revision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from herd.discovery.membership import Membership
from herd.discovery.roster import with_discovered
from herd.manifest.model import Fleet
from herd.router.reload import Served

#: Nodes joining within this window are merged in one rebuild (a restart of
#: the router sees every agent join at once); a departure applies at once.
JOIN_BATCH_S = 0.2


def merge(fleet: Fleet, membership: Membership) -> Fleet:
    """`fleet` with the live discovered (non-static) members appended."""
    return with_discovered(fleet, membership.members.values())


class DiscoveredSource:
    """A manifest source (`current`, `check`, `listeners`) with agents merged in."""

    def __init__(self, inner: Any, membership: Membership):
        self.inner = inner
        self.membership = membership
        self.listeners: list[Callable[[Served], None]] = []
        self._key: tuple[int, int] = (0, -1)
        self._departures = 0
        self._built_at = float("-inf")
        self._served: Served = inner.current()
        inner.listeners.append(self._revision)
        self._rebuild(self._served)

    @property
    def last_error(self) -> str | None:
        return getattr(self.inner, "last_error", None)

    def static(self) -> Served:
        """The manifest's own revision (static nodes only)."""
        return self.inner.current()

    def current(self) -> Served:
        served = self.inner.current()
        generation = self.membership.check(served.fleet.discovery.heartbeat_timeout_s)
        if self._key != (id(served), generation) and (
            self._key[0] != id(served)
            or self._departures != self.membership.departures
            or self.membership.monotonic() - self._built_at >= JOIN_BATCH_S
        ):
            self._notify(self._rebuild(served))
        return self._served

    def check(self) -> bool:
        return self.inner.check()

    def _revision(self, served: Served) -> None:
        self._notify(self._rebuild(served))

    def _rebuild(self, served: Served) -> Served:
        self._key = (id(served), self.membership.generation)
        self._departures = self.membership.departures
        self._built_at = self.membership.monotonic()
        fleet = merge(served.fleet, self.membership)
        self._served = served if fleet is served.fleet else replace(served, fleet=fleet)
        return self._served

    def _notify(self, served: Served) -> None:
        for listener in self.listeners:
            listener(served)
