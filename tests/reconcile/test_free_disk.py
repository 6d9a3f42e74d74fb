"""Free disk for the replica choice: what the nodes' agents report to the running
router (its /fleet/status), asked over real HTTP; "unknown" without it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from herd.manifest.model import Fleet, Model, Node, Placement, Router
from herd.reconcile import render, session
from herd.reconcile.actions import Imported

NODES = tuple(
    Node(f"n{i}", f"http://127.0.0.1:9/{i}", labels={"g": "x"}) for i in range(3)
)
STATUS = {
    "nodes": [
        {
            "name": "n0",
            "metrics": {"disk": {"path": "/m", "total": 9, "free": 1 << 30}},
        },
        {"name": "n1", "metrics": {"disk": {"free": 900 << 30}}},
        {"name": "n2", "found": "static"},  # no agent: unknown
        {"name": "n3", "metrics": {"disk": {"free": "lots"}}},  # garbage: ignored
    ]
}


@pytest.fixture
def router():
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.path)
            body = json.dumps(STATUS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def fleet(listen: str) -> Fleet:
    model = Model(
        "tiny:latest", place=Placement(labels={"g": "x"}, replicas=1), bundle="b1"
    )
    return Fleet(name="t", router=Router(listen=listen), nodes=NODES, models=(model,))


def test_free_disk_from_the_routers_agent_reports(router):
    listen, seen = router
    assert session.free_disk(fleet(listen)) == {"n0": 1 << 30, "n1": 900 << 30}
    assert seen == ["/fleet/status"]


def test_plan_places_the_replica_on_the_roomiest_node_and_shows_unknown(router):
    listen, _ = router
    f = fleet(listen)

    def tags(url: str, timeout: float) -> dict:
        return {"models": []}

    plan = session.plan_live(None, f, get_json=tags)
    # Without the catalog the pull cannot be planned, but the choice is made.
    assert plan.placed["tiny:latest"] == ("n1",)
    free = {n.node: n.free_bytes for n in plan.nodes}
    assert free == {"n0": 1 << 30, "n1": 900 << 30, "n2": None}
    text = render.table(plan, f)
    assert "free disk 900.0 GiB" in text and "free disk unknown" in text


def test_no_router_means_unknown():
    from tests.router.routerproc import free_port

    assert session.free_disk(fleet(f"127.0.0.1:{free_port()}")) == {}


def test_catalog_pull_goes_to_the_roomy_node(router, monkeypatch):
    listen, _ = router
    f = fleet(listen)
    monkeypatch.setattr(
        session,
        "catalog",
        lambda store: ({"tiny:latest": Imported("tiny:latest", "b1", 5)}, {"b1"}),
    )
    plan = session.plan_live(None, f, get_json=lambda url, t: {"models": []})
    pulls = {n.node: [p.model for p in n.pulls] for n in plan.nodes}
    assert pulls == {"n0": [], "n1": ["tiny:latest"], "n2": []}
