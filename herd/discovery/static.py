"""Agentless health polling of the manifest's static nodes.

Every `interval` seconds each node is asked for /api/tags (models on disk)
and /api/ps (models loaded), for /api/version when new, down or every
VERSION_EVERY_S, and, for a model whose /api/tags entry lists no
capabilities, once per model digest for /api/show
(herd.discovery.capabilities); each with a short timeout. The nodes' polls
run in parallel, their starts spread over the first SPREAD of the interval:
parsing the answers is work on the worker's event loop, and a fleet polled all
at once would hold every request arriving meanwhile for the whole burst (tens
of nodes: milliseconds), where spread polls cost any one request at most one
node's parse. Two failed polls in a row mark a node down (so within ~2
intervals plus the spread and one timeout, under 5 s with the defaults); the
next good poll brings it back. The poller only ever contacts URLs that the
current manifest declares.

With several router workers, one of them polls (`share()`: the worker the
shared fleet state elects, herd.router.fleetstate) and publishes each round;
the others adopt it within FOLLOW_S, so every node is polled once per
interval however many workers there are. What a worker sees on its own
(a connection refused, a good answer) is shared too, so the polling worker
decides as if it had seen it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from herd.discovery.capabilities import ShowCache
from herd.discovery.health import (
    NodeHealth,
    PollResult,
    connection_refused,
    health_doc,
    health_from_doc,
    observe,
)
from herd.manifest.model import Fleet, Node
from herd.router.observe.logfield import logged

log = logging.getLogger("herd.discovery")

INTERVAL_S = 1.0
TIMEOUT_S = 1.5
#: How often a worker that does not poll looks for the polling worker's news.
FOLLOW_S = 0.25
#: Share of the interval over which a round's node polls start (see above).
SPREAD = 0.5
#: How often a node that is up is asked for /api/version (it changes only when
#: the node's Ollama is upgraded): one GET in three less per poll, which is
#: CPU on the event loop (about 1/3 of the poller's, 40 nodes: ~20 ms a
#: second). A node that is new, down or without a known version is asked on
#: every poll.
VERSION_EVERY_S = 60.0


class StaticPoller:
    """Holds the latest `NodeHealth` of every node and refreshes it."""

    def __init__(
        self,
        fleet: Callable[[], Fleet],
        upstream: Any,
        clock: Callable[[], float] = time.time,
        *,
        interval: float = INTERVAL_S,
        timeout: float = TIMEOUT_S,
    ):
        self._fleet = fleet
        self._upstream = upstream
        self._clock = clock
        self.interval = interval
        self.timeout = timeout
        self.health: dict[str, NodeHealth] = {}
        #: When each node last answered a proxied request well (passive health).
        self.served_at: dict[str, float] = {}
        #: The fleet state shared with the other workers (None: poll alone).
        self._state: Any = None
        self._seen = 0
        self.leading = True
        #: Capabilities from /api/show where /api/tags lists none.
        self.shows = ShowCache(upstream)
        #: When each node last answered /api/version (time.monotonic).
        self._version_at: dict[str, float] = {}

    def share(self, state: Any) -> None:
        """Poll only when elected by `state`; otherwise adopt its polls."""
        self._state = state

    def get(self, node: Node) -> NodeHealth:
        """The node's health; a node new to the manifest (or moved) is unknown."""
        health = self.health.get(node.name)
        if health is None or health.url != node.url:
            health = self.health[node.name] = NodeHealth(node.name, node.url)
        return health

    def poll_node(self, node: Node) -> NodeHealth:
        """Poll one node now and record the result."""
        start = time.monotonic()
        try:
            if node.api == "openai":
                result = self._poll_openai(node)
            else:
                get = self._upstream.get_json
                auth = node.auth
                version = None
                if self._wants_version(node, start):
                    version = get(node.url, "/api/version", self.timeout, auth)
                    self._version_at[node.name] = start
                tags = get(node.url, "/api/tags", self.timeout, auth)
                ps = get(node.url, "/api/ps", self.timeout, auth)
                result = PollResult(
                    ok=True,
                    version=str((version or {}).get("version") or "") or None,
                    tags=self.shows.fill(
                        node.url, tuple(_models(tags)), self.timeout, auth
                    ),
                    ps=tuple(_models(ps)),
                )
            result = replace(result, latency_ms=(time.monotonic() - start) * 1000.0)
        except Exception as ex:  # noqa: BLE001 - any failure means "not healthy"
            result = PollResult(ok=False, error=str(ex) or type(ex).__name__)
        prev = self.get(node)
        served_at = self.served_at.get(node.name)
        state = self._state
        if state is not None:
            elsewhere = state.served_at(node.name)
            if elsewhere and (served_at is None or elsewhere > served_at):
                served_at = elsewhere
            refused = state.refused_at(node.name)
            if refused > (prev.last_poll or 0.0):
                prev = connection_refused(prev, "connection refused", refused)
        health = observe(prev, result, self._clock(), served_at)
        if health.up != prev.up and prev.up is not None:
            state = "up" if health.up else "down"
            # (The error can quote what the node sent: one escaped token.)
            why = "" if health.up else logged(health.last_error, 500, spaces=True)
            log.warning("node %s is %s%s", node.name, state, why and f" ({why})")
        self.health[node.name] = health
        return health

    def _wants_version(self, node: Node, now: float) -> bool:
        """Whether this poll asks `node` for /api/version (VERSION_EVERY_S)."""
        known = self.health.get(node.name)
        if known is None or known.up is not True or known.version is None:
            return True
        if known.url != node.url:
            return True
        return now - self._version_at.get(node.name, float("-inf")) >= VERSION_EVERY_S

    def _poll_openai(self, node: Node) -> PollResult:
        """An OpenAI-compatible node: its models are what /v1/models lists
        (all of them count as loaded: such servers hold what they serve).
        /health, where the server has one, must answer 200; a 404 means it
        has none."""
        upstream = self._upstream
        listing = upstream.get_json(node.url, "/v1/models", self.timeout, node.auth)
        reply = upstream.open(
            node.url,
            "GET",
            "/health",
            connect_s=self.timeout,
            network_s=self.timeout,
            headers=node.auth,
        )
        status = reply.status
        reply.read()
        reply.close()
        if status not in (200, 404, 405):
            raise RuntimeError(f"{node.url}/health: HTTP {status}")
        models = openai_models(listing)
        return PollResult(ok=True, version=None, tags=models, ps=models)

    def poll_once(self, spread: float = 0.0) -> None:
        """Poll every node of the current manifest in parallel, then return;
        the polls start evenly over `spread` seconds (0: all at once)."""
        self.poll_nodes(self._fleet(), spread)

    def poll_nodes(self, fleet: Fleet, spread: float) -> None:
        """Poll `fleet`'s nodes in parallel, starting one every spread / N
        seconds; forget the health of nodes it no longer has."""
        import gevent

        known = {n.name for n in fleet.nodes}
        for name in [n for n in self.health if n not in known]:
            del self.health[name]
        gap = spread / len(fleet.nodes) if fleet.nodes else 0.0
        jobs = []
        for node in fleet.nodes:
            if jobs and gap:
                gevent.sleep(gap)  # one node's poll starts per wake-up
            jobs.append(gevent.spawn(self.poll_node, node))
        gevent.joinall(jobs, timeout=self.timeout * 3 + 1)
        for job in jobs:
            job.kill(block=False)

    def report_served(self, name: str) -> None:
        """The proxy got a good answer from the node (cheap: one dict write)."""
        now = self.served_at[name] = self._clock()
        if self._state is not None:
            self._state.served(name, now)

    def report_refused(self, node: Node, error: str) -> None:
        """The proxy saw the node refuse a connection: mark it down at once."""
        now = self._clock()
        self.health[node.name] = connection_refused(self.get(node), error, now)
        if self._state is not None:
            self._state.refused(node.name, now)

    def publish(self) -> None:
        """This worker's poll, for the workers that do not poll."""
        data = json.dumps([health_doc(h) for h in self.health.values()])
        if not self._state.publish(data.encode("utf-8")):
            log.error("node health is too large to share with the other workers")

    def follow(self) -> None:
        """Adopt the polling worker's latest poll. A node this worker saw
        refuse a connection after that poll stays as this worker saw it."""
        news = self._state.published(self._seen)
        if news is None:
            return
        self._seen, data = news
        for doc in json.loads(data):
            polled = health_from_doc(doc)
            mine = self.health.get(polled.name)
            if mine is None or (mine.last_poll or 0.0) <= (polled.last_poll or 0.0):
                self.health[polled.name] = polled

    def run(self, stopped: Callable[[], bool]) -> None:
        """Poll forever (a background greenlet) until `stopped()`; with a
        shared state, only while this worker is the one elected to poll."""
        import gevent

        while not stopped():
            began = time.monotonic()
            state = self._state
            self.leading = state is None or state.lead_polls()
            try:
                if self.leading:
                    self.poll_once(spread=SPREAD * self.interval)
                    if state is not None and state.rows > 1:
                        self.publish()  # someone to tell
                else:
                    self.follow_once()
            except Exception:  # noqa: BLE001 - the poller must never die
                log.exception("health poll failed")
            pause = self.interval if self.leading else min(FOLLOW_S, self.interval)
            gevent.sleep(max(0.05, pause - (time.monotonic() - began)))

    def follow_once(self) -> None:
        """One round of a worker that does not poll (subclasses add chores)."""
        self.follow()


def openai_models(doc: Any) -> tuple[dict[str, Any], ...]:
    """/v1/models `data` entries as /api/tags-like entries: `model` is the id
    exactly as the node spells it (it is sent back to the node as is)."""
    data = (doc or {}).get("data") if isinstance(doc, dict) else None
    out = []
    for entry in data or ():
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            out.append({"name": entry["id"], "model": entry["id"]})
    return tuple(out)


def _models(doc: Any) -> list[dict[str, Any]]:
    models = (doc or {}).get("models") if isinstance(doc, dict) else None
    return [m for m in models or () if isinstance(m, dict)]
