"""One router for the dashboard's tests: two `herd sim` nodes, an operator
group (127.0.0.1) and a plain group (127.0.0.2), and traffic whose totals the
tests know (`SENT`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import pytest

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
        yield fleet
    finally:
        router.stop()
        for node in nodes:
            node.kill()
