"""queues: bounded slots per node, bounded wait, refusal when full."""

from __future__ import annotations

import threading
import time

import pytest

from herd.errors import QueueFull
from herd.router.routing.queues import Queues, Slots


def test_free_slots_first_in_rank_order():
    q = Queues()
    q.configure([("a", 1), ("b", 1)], depth=0)
    assert q.acquire(("a", "b"), 1.0)[0] == "a"
    assert q.acquire(("a", "b"), 1.0)[0] == "b"
    with pytest.raises(QueueFull) as info:
        q.acquire(("a", "b"), 1.0)
    assert info.value.headers["Retry-After"]
    q.release("a")
    assert q.acquire(("a", "b"), 1.0)[0] == "a"


def test_waiter_gets_the_released_slot():
    q = Queues()
    q.configure([("a", 1)], depth=1)
    q.acquire(("a",), 1.0)
    got = []
    waiter = threading.Thread(target=lambda: got.append(q.acquire(("a",), 5.0)))
    waiter.start()
    time.sleep(0.1)
    assert q.waiting("a") == 1
    with pytest.raises(QueueFull):  # the queue (depth 1) is full
        q.acquire(("a",), 1.0)
    q.release("a")
    waiter.join(5)
    assert got and got[0][0] == "a" and got[0][1] > 0
    assert q.in_flight("a") == 1


def test_wait_times_out():
    q = Queues()
    q.configure([("a", 1)], depth=4)
    q.acquire(("a",), 1.0)
    with pytest.raises(QueueFull, match="after waiting"):
        q.acquire(("a",), 0.05)
    assert q.waiting("a") == 0


def test_reconfigure_keeps_in_flight():
    s = Slots(1, 0)
    assert s.try_acquire()
    s.configure(3, 2)
    assert s.try_acquire() and s.try_acquire() and not s.try_acquire()
    assert s.in_flight == 3
