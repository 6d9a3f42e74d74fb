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

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from herd.discovery.membership import CHECK_S, Membership
from herd.discovery.roster import with_discovered
from herd.manifest.model import Fleet
from herd.router.reload import Served

log = logging.getLogger("herd.router")

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
        #: A background greenlet runs `keep_checking`.
        self._checker = False
        self._served: Served = inner.current()
        inner.listeners.append(self._revision)
        self._rebuild(self._served)

    @property
    def last_error(self) -> str | None:
        return getattr(self.inner, "last_error", None)

    @property
    def refusals(self) -> int:
        """The inner source's refused revisions (herd_reload_errors_total)."""
        return getattr(self.inner, "refusals", 0)

    def static(self) -> Served:
        """The manifest's own revision (static nodes only)."""
        return self.inner.current()

    def current(self) -> Served:
        served = self.inner.current()
        if self._checker:
            generation = self.membership.generation
        else:
            timeout_s = served.fleet.discovery.heartbeat_timeout_s
            generation = self.membership.check(timeout_s)
        if self._key != (id(served), generation) and (
            self._key[0] != id(served)
            or self._departures != self.membership.departures
            or self.membership.monotonic() - self._built_at >= JOIN_BATCH_S
        ):
            self._notify(self._rebuild(served))
        return self._served

    def check(self) -> bool:
        return self.inner.check()

    def keep_checking(self, stopped: Callable[[], bool]) -> None:
        """Catch up with other workers' membership writes every CHECK_S, in a
        background greenlet of the router worker, until `stopped()`.

        `Membership.check` reads (and may write) discovery.db; with this loop
        running, `current()`, called by every request, no longer does: a
        request never waits on SQLite (another worker's write lock, a slow
        disk). Without it (an app driven in-process) `current()` checks.
        """
        import gevent

        self._checker = True
        while not stopped():
            try:
                fleet = self.inner.current().fleet
                self.membership.check(fleet.discovery.heartbeat_timeout_s)
            except Exception:  # noqa: BLE001 - the checker must never die
                log.exception("checking discovery membership failed")
            gevent.sleep(CHECK_S)

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
