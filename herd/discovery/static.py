"""Agentless health polling of the manifest's static nodes.

Every `interval` seconds each node is asked, in parallel, for /api/version,
/api/tags (models on disk) and /api/ps (models loaded), each with a short
timeout. Two failed polls in a row mark a node down (so within ~2 intervals
plus one timeout, under 5 s with the defaults); the next good poll brings it
back. The poller only ever contacts URLs that the current manifest declares.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from herd.discovery.health import NodeHealth, PollResult, connection_refused, observe
from herd.manifest.model import Fleet, Node

log = logging.getLogger("herd.discovery")

INTERVAL_S = 1.0
TIMEOUT_S = 1.5


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
                version = get(node.url, "/api/version", self.timeout, auth)
                tags = get(node.url, "/api/tags", self.timeout, auth)
                ps = get(node.url, "/api/ps", self.timeout, auth)
                result = PollResult(
                    ok=True,
                    version=str((version or {}).get("version") or "") or None,
                    tags=tuple(_models(tags)),
                    ps=tuple(_models(ps)),
                )
            result = replace(result, latency_ms=(time.monotonic() - start) * 1000.0)
        except Exception as ex:  # noqa: BLE001 - any failure means "not healthy"
            result = PollResult(ok=False, error=str(ex) or type(ex).__name__)
        prev = self.get(node)
        health = observe(prev, result, self._clock(), self.served_at.get(node.name))
        if health.up != prev.up and prev.up is not None:
            log.warning(
                "node %s is %s%s",
                node.name,
                "up" if health.up else "down",
                "" if health.up else f" ({health.last_error})",
            )
        self.health[node.name] = health
        return health

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

    def poll_once(self) -> None:
        """Poll every node of the current manifest in parallel, then return."""
        import gevent

        fleet = self._fleet()
        known = {n.name for n in fleet.nodes}
        for name in [n for n in self.health if n not in known]:
            del self.health[name]
        jobs = [gevent.spawn(self.poll_node, node) for node in fleet.nodes]
        gevent.joinall(jobs, timeout=self.timeout * 3 + 1)
        for job in jobs:
            job.kill(block=False)

    def report_served(self, name: str) -> None:
        """The proxy got a good answer from the node (cheap: one dict write)."""
        self.served_at[name] = self._clock()

    def report_refused(self, node: Node, error: str) -> None:
        """The proxy saw the node refuse a connection: mark it down at once."""
        self.health[node.name] = connection_refused(
            self.get(node), error, self._clock()
        )

    def run(self, stopped: Callable[[], bool]) -> None:
        """Poll forever (a background greenlet) until `stopped()`."""
        import gevent

        while not stopped():
            began = time.monotonic()
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must never die
                log.exception("health poll failed")
            gevent.sleep(max(0.05, self.interval - (time.monotonic() - began)))


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
