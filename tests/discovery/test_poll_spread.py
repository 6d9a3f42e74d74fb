"""The health poller spreads a round's node polls over the interval.

Parsing a node's answers is work on the worker's event loop: a fleet polled
all at once queues every request arriving meanwhile behind the whole burst.
"""

from __future__ import annotations

from types import SimpleNamespace

import gevent

from herd.discovery import static
from herd.discovery.static import StaticPoller


class Upstream:
    """Answers every poll at once, recording which node was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_json(self, url: str, path: str, timeout: float, auth: object) -> dict:
        self.asked.append(url)
        return {"version": "0.33.0"} if path == "/api/version" else {"models": []}


def test_a_round_starts_one_node_poll_per_gap(monkeypatch):
    nodes = [
        SimpleNamespace(name=f"n{i}", url=f"http://10.0.0.{i}:11434", api="ollama")
        for i in range(1, 5)
    ]
    for node in nodes:
        node.auth = None
    upstream = Upstream()
    poller = StaticPoller(
        lambda: SimpleNamespace(nodes=nodes), upstream, interval=2.0, timeout=0.5
    )
    slept: list[float] = []
    real_sleep = gevent.sleep

    def sleep(seconds: float = 0) -> None:
        slept.append(seconds)
        real_sleep(0)

    monkeypatch.setattr(gevent, "sleep", sleep)
    rounds = iter([False, True])
    poller.run(lambda: next(rounds))
    gap = static.SPREAD * poller.interval / len(nodes)
    # One node's poll starts, then a gap, ... then the rest of the interval.
    assert slept[: len(nodes) - 1] == [gap] * (len(nodes) - 1)
    assert len(slept) == len(nodes)
    assert sorted(set(upstream.asked)) == [n.url for n in nodes]
    assert all(poller.health[n.name].up for n in nodes)
