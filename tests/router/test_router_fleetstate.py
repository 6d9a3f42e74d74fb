"""One fleet state across router workers: `herd serve --workers 3` keeps the
manifest's limits for the router as a whole (herd/router/fleetstate.py).

One router (three gunicorn gevent workers) and one recording node are shared
by the module. The node counts, on its side, how many chat requests it holds
at once and how often it is polled; it holds chats until the test opens its
gate, so every count is exact however slow the machine is.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.router.recnode import RecordingNode
from tests.router.routerproc import Router, manifest, start_router

pytestmark = pytest.mark.e2e

LOCAL, LIMITED = "127.0.0.1", "127.0.0.2"
WORKERS = 3
SLOTS, DEPTH, BURST = 2, 4, 12
RATE = 5
CLIENTS = [
    {"name": "local", "networks": [f"{LOCAL}/32"], "operator": True},
    {
        "name": "limited",
        "networks": [f"{LIMITED}/32"],
        "rate_limit": {"requests_per_minute": RATE, "burst": RATE},
    },
]
CHAT = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}


class GatedNode(RecordingNode):
    """Holds every chat until `gate` is set; counts chats held at once (at
    the node) and health polls (/api/ps: asked on every poll)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.active = 0
        self.peak = 0
        self.polls = 0

    def answer_get(self, h: BaseHTTPRequestHandler) -> None:
        if h.path == "/api/ps":
            with self.lock:
                self.polls += 1
        super().answer_get(h)

    def answer_post(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if h.path != "/api/chat":  # e.g. the poller's /api/show: not a chat
            super().answer_post(h, raw)
            return
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            self.gate.wait(60)
        finally:
            with self.lock:
                self.active -= 1
        super().answer_post(h, raw)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Router, Any]]:
    node = GatedNode()
    text = manifest(
        [node],
        clients=CLIENTS,
        max_concurrency=SLOTS,
        limits={"queue_depth": DEPTH, "queue_timeout_s": 30, "retries": 0},
    )
    tmp = tmp_path_factory.mktemp("fleetstate")
    router = start_router(
        tmp / "state", text, tmp / "router.log", workers=WORKERS, timeout=90
    )
    try:
        router.wait_nodes_up(1)
        yield router, node
    finally:
        router.stop()
        node.gate.set()
        node.stop()


def post(url: str, body: Any, source: str = LOCAL) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(
        host, int(port), timeout=60, source_address=(source, 0)
    )
    try:
        conn.request(
            "POST", "/api/chat", json.dumps({**body, "stream": False}).encode()
        )
        reply = conn.getresponse()
        reply.read()
        return reply.status
    except OSError:
        return 0  # the worker serving it was killed
    finally:
        conn.close()


def wait_for(check: Any, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def burst(router: Router, node: GatedNode, count: int = BURST) -> list[int]:
    """`count` chats at once while the node holds them; the gate opens once
    every request is either at the node, queued or refused."""
    node.gate.clear()
    node.peak = 0
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(post(router.url, CHAT)))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    # Free slots, then queue places, then refusals: settled when the refused
    # ones have answered and the node holds what it was given.
    wait_for(lambda: len(statuses) >= count - SLOTS - DEPTH and node.active >= SLOTS)
    time.sleep(0.3)  # a request the limits wrongly admit shows up at the node
    node.gate.set()
    for thread in threads:
        thread.join(60)
    return sorted(statuses)


def families(router: Router) -> dict[str, Any]:
    with urllib.request.urlopen(router.url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def chats_counted(router: Router) -> dict[str, float]:
    """herd_requests_total for /api/chat by status."""
    out: dict[str, float] = {}
    for sample in families(router)["herd_requests"].samples:
        if sample.name == "herd_requests_total" and sample.labels["route"] == (
            "/api/chat"
        ):
            status = sample.labels["status"]
            out[status] = out.get(status, 0) + sample.value
    return out


def test_node_limits_hold_across_workers(fleet):
    router, node = fleet
    statuses = burst(router, node)
    assert node.peak == SLOTS, f"the node held {node.peak} chats at once"
    # Two at the node, four queued, the other six refused at once.
    assert statuses.count(200) == SLOTS + DEPTH, statuses
    assert statuses.count(503) == BURST - SLOTS - DEPTH, statuses


def test_counters_are_the_fleets_on_every_scrape(fleet):
    router, node = fleet
    before = chats_counted(router)
    served_before = router.get("/fleet/status")[1]["requests"]
    statuses = burst(router, node)
    served = statuses.count(200)

    # A worker counts a request just after its last byte is sent: settle first.
    def settled() -> bool:
        status = router.get("/fleet/status")[1]
        done = status["requests"] - served_before == served
        return done and status["nodes"][0]["in_flight"] == 0

    assert wait_for(settled)
    # Every scrape lands on some worker: each must show every worker's count.
    for _ in range(2 * WORKERS):
        after = chats_counted(router)
        assert after.get("200", 0) - before.get("200", 0) == served
        assert after.get("503", 0) - before.get("503", 0) == statuses.count(503)
        status = router.get("/fleet/status")[1]
        assert status["requests"] - served_before == served
        (view,) = status["nodes"]
        assert (view["in_flight"], view["waiting"]) == (0, 0)


def test_group_rate_limit_is_fleet_wide(fleet):
    router, _ = fleet
    statuses = [post(router.url, CHAT, source=LIMITED) for _ in range(3 * RATE)]
    assert statuses.count(200) == RATE, statuses
    assert statuses.count(429) == 2 * RATE, statuses


def test_each_node_is_polled_once_per_interval(fleet):
    router, node = fleet
    first, began = node.polls, time.monotonic()
    time.sleep(4)
    polls, elapsed = node.polls - first, time.monotonic() - began
    # One poller at a 1 s interval: at most one poll per second (plus the
    # one under way); one poller per worker would poll three times as often.
    assert 1 <= polls <= elapsed + 1, f"{polls} polls in {elapsed:.1f}s"


def workers_of(router: Router) -> list[psutil.Process]:
    (master,) = psutil.Process(router.proc.pid).children()
    return master.children()


def holding(worker: psutil.Process, port: int) -> bool:
    """Whether `worker` has a connection open to the node."""
    return any(
        c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        for c in worker.net_connections("tcp")
    )


def test_killed_worker_gives_its_slots_back(fleet):
    router, node = fleet
    port = int(node.url.rsplit(":", 1)[1])
    node.gate.clear()
    held = [threading.Thread(target=post, args=(router.url, CHAT)) for _ in "ab"]
    for thread in held:
        thread.start()
    assert wait_for(lambda: node.active == SLOTS)
    victims = [w for w in workers_of(router) if holding(w, port)]
    assert victims
    os.kill(victims[0].pid, signal.SIGKILL)
    node.gate.set()
    for thread in held:
        thread.join(60)
    assert wait_for(lambda: len(workers_of(router)) == WORKERS)
    assert wait_for(
        lambda: router.get("/fleet/status")[1]["nodes"][0]["in_flight"] == 0
    )
    # Full capacity again: both slots and every queue place.
    statuses = burst(router, node)
    assert node.peak == SLOTS
    assert statuses.count(200) == SLOTS + DEPTH, statuses
