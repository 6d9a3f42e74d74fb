"""One router for the dashboard's tests: two `herd sim` nodes, an operator
group (127.0.0.1) and a plain group (127.0.0.2), and traffic whose totals the
tests know (`SENT`)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import httpx
import pytest

from herd.router.observe import rollup
from tests.router.routerproc import Router, manifest, start_router, start_sim

CLIENTS = [
    {"name": "ops", "networks": ["127.0.0.1/32"], "operator": True},
    {"name": "apps", "networks": ["127.0.0.2/32"]},
]
HELLO = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}

#: (group, tag, model, expected status) -> how many of each request were sent.
SENT = {
    ("ops", "app:wiki", "llama3.2:3b", 200): 4,
    ("apps", "app:search", "llama3.2:3b", 200): 3,
    ("apps", "app:search", "qwen3:0.6b", 200): 2,
    ("apps", None, "no-such-model", 404): 1,
}
SOURCE = {"ops": "127.0.0.1", "apps": "127.0.0.2"}


def close(got: float | None, exact: float | None) -> bool:
    """Whether a percentile read from the traffic rollup's histogram is within
    its documented error of the exact nearest-rank one."""
    if exact is None or got is None:
        return got is exact
    if exact < rollup.LOWEST_MS:
        return abs(got - exact) <= rollup.LOWEST_MS / 2
    return abs(got - exact) <= exact * rollup.RELATIVE_ERROR + 0.001


@dataclass
class Fleet:
    router: Router
    started: float

    def client(self, group: str) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=SOURCE[group])
        return httpx.Client(base_url=self.router.url, transport=transport, timeout=30)


def send_traffic(fleet: Fleet) -> None:
    for (group, tag, model, status), count in SENT.items():
        headers = {"X-Herd-Tag": tag} if tag else {}
        with fleet.client(group) as client:
            for _ in range(count):
                reply = client.post(
                    "/api/chat",
                    json={**HELLO, "model": model, "stream": False},
                    headers=headers,
                )
                assert reply.status_code == status, reply.text


def written(router: Router, count: int, timeout: float = 20) -> None:
    """Wait until traces.db holds `count` model requests (the router writes
    traces about a second after the request), so that the dashboard's first,
    cached, look at the day already sees them all."""
    path = router.state_dir / "traces.db"
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        if path.exists():
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                (found,) = conn.execute(
                    "SELECT count(*) FROM traces WHERE requested_model IS NOT NULL"
                ).fetchone()
            except sqlite3.OperationalError:
                found = 0  # the table is not there yet
            finally:
                conn.close()
            if found >= count:
                return
        time.sleep(0.2)
    raise AssertionError(f"{found} of {count} traces written")


@pytest.fixture(scope="package")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    nodes = [start_sim("node-a"), start_sim("node-b")]
    router = start_router(
        tmp / "state", manifest(nodes, clients=CLIENTS), tmp / "router.log"
    )
    try:
        router.wait_nodes_up(2)
        fleet = Fleet(router, time.time())
        send_traffic(fleet)
        written(router, sum(SENT.values()))
        yield fleet
    finally:
        router.stop()
        for node in nodes:
            node.kill()
