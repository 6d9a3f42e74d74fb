"""The health poller's work on the event loop: spread out, and no more of it
than needed.

Parsing a node's answers is work on the worker's event loop: a fleet polled
all at once queues every request arriving meanwhile behind the whole burst,
and every GET costs the loop CPU time.
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


def test_a_node_that_is_up_is_asked_its_version_once_a_minute(monkeypatch):
    """/api/version changes only with an upgrade: asking it every second is a
    third of the poller's work on the event loop for nothing."""
    node = SimpleNamespace(
        name="n1", url="http://10.0.0.1:11434", api="ollama", auth=None
    )
    upstream = Upstream()
    asked: list[str] = []
    upstream.get_json = lambda url, path, timeout, auth: (  # type: ignore[method-assign]
        asked.append(path) or Upstream.get_json(upstream, url, path, timeout, auth)
    )
    now = [1000.0]
    monkeypatch.setattr(static.time, "monotonic", lambda: now[0])
    poller = StaticPoller(lambda: SimpleNamespace(nodes=[node]), upstream)
    for _ in range(5):
        poller.poll_node(node)
        now[0] += 1.0
    assert asked.count("/api/version") == 1
    assert asked.count("/api/tags") == asked.count("/api/ps") == 5
    assert poller.health["n1"].version == "0.33.0" and poller.health["n1"].up
    now[0] += static.VERSION_EVERY_S
    poller.poll_node(node)
    assert asked.count("/api/version") == 2


def test_a_node_going_down_is_logged_on_one_line(caplog):
    """The poll's error can quote what the node sent: it is one escaped token."""
    node = SimpleNamespace(
        name="n1", url="http://10.0.0.1:11434", api="ollama", auth=None
    )
    up = Upstream()

    class Failing(Upstream):
        def get_json(self, url: str, path: str, timeout: float, auth: object) -> dict:
            raise ValueError("bad answer\nforged line \x1b[2J")

    poller = StaticPoller(lambda: SimpleNamespace(nodes=[node]), up, timeout=0.5)
    assert poller.poll_node(node).up
    poller._upstream = Failing()
    with caplog.at_level("WARNING", logger=static.log.name):
        # (A node is down after a few failed polls in a row.)
        for _ in range(10):
            if not poller.poll_node(node).up:
                break
        assert not poller.health["n1"].up
    (line,) = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    assert "\n" not in line and "\x1b" not in line
    assert "bad answer\\nforged line \\x1b[2J" in line
