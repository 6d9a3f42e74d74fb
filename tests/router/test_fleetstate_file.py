"""The shared fleet state file itself (herd/router/fleetstate.py), with real
processes: a worker killed with SIGKILL while holding slots gives them back,
and its counts stay in the totals."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from herd.router import fleetfile
from herd.router.fleetstate import REQUESTS, ROWS, FleetState


@pytest.fixture
def path() -> Iterator[str]:
    yield fleetfile.prepare()
    fleetfile.cleanup()


def holder(path: str) -> int:
    """A process that takes both slots of node "a", counts 5 requests (and 3
    of a herd_requests_total series) and waits to be killed; returns its pid
    once it holds them."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            state = FleetState(path)
            node = state.node("a")
            held = state.take(node, 2, queued=False) and state.take(node, 2, False)
            state.bump(REQUESTS, 5)
            state.series_cells[state.series("a\x1f200") * ROWS + state.row] += 3
            os.write(write, b"1" if held else b"0")
            signal.pause()
        finally:
            os._exit(1)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    return pid


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_the_master_frees_a_killed_workers_slots(path):
    pid = holder(path)
    master = FleetState(path, claim=False)
    node = master.node("a")
    assert master.in_flight(node) == 2
    kill(pid)
    assert master.in_flight(node) == 2  # until the master hears of it
    assert master.release_worker(pid)
    assert master.in_flight(node) == 0
    assert master.total(REQUESTS) == 5  # counts never go backwards
    assert master.series_totals() == [("a\x1f200", 3)]  # herd_requests_total
    me = FleetState(path)
    assert me.take(node, 2, queued=False) and me.take(node, 2, queued=False)
    assert not me.take(node, 2, queued=False)


def test_a_new_worker_reclaims_a_dead_workers_row(path):
    pid = holder(path)
    kill(pid)
    # No word from the master: the next worker to start finds the pid gone.
    me = FleetState(path)
    node = me.node("a")
    assert me.in_flight(node) == 0
    assert me.total(REQUESTS) == 5
    assert me.take(node, 1, queued=False)
    assert not me.take(node, 1, queued=False)


def test_a_changed_rate_limit_starts_a_full_bucket():
    state = FleetState()
    assert state.spend("g", 100.0, 60, 2) is None
    assert state.spend("g", 100.0, 60, 2) is None
    assert state.spend("g", 100.0, 60, 2) is not None  # empty
    assert state.spend("g", 101.0, 60, 2) is None  # one a second
    assert state.spend("g", 101.0, 120, 3) is None  # reloaded: full again
    assert state.spend("g", 101.0, 120, 3) is None


@pytest.fixture
def solo() -> Iterator[str]:
    yield fleetfile.prepare(workers=1)
    fleetfile.cleanup()


def test_one_worker_takes_no_lock_until_a_second_joins(solo):
    """A one-worker router's file is SOLO: its worker never waits on the flock
    (here held by someone else, so a lock would hang: SIGALRM ends that);
    a second worker's claim ends SOLO and both lock from then on."""
    import fcntl

    fd = os.open(solo, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        alone = FleetState(solo)
        node = alone.node("b")
        assert alone.take(node, 1, queued=False)
        assert not alone.take(node, 1, queued=False)
        assert alone.spend("g", 100.0, 60, 1) is None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    pid = holder(solo)  # a second worker (takes both slots of node "a")
    try:
        assert alone.in_flight(alone.node("a")) == 2
        fd = os.open(solo, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with pytest.raises(TimeoutError):
                signal.setitimer(signal.ITIMER_REAL, 0.3)
                alone.take(node, 10, queued=False)  # now waits for the lock
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    finally:
        kill(pid)


def _timeout(signum: int, frame: object) -> None:
    raise TimeoutError
