"""The worker's read deadlines (herd/router/http/deadlines.py): which waits a
sweep ends. In a child process: gevent's hub, as in a router worker."""

from __future__ import annotations

from tests.router.routerproc import run_script

#: Four readers block on socket pairs: one past its deadline, one far from it,
#: and two far from it, one of them droppable (a keep-alive connection between
#: requests), while the worker stops (drop_idle). Prints how each wait ended.
READERS = """
import time
import gevent, gevent.socket
from herd.router.http.deadlines import SWEEP_S, Deadlines

deadlines = Deadlines()
ended = {}
pairs = {}

def reader(name, seconds, droppable):
    ours, theirs = pairs[name] = gevent.socket.socketpair()
    current = gevent.getcurrent()
    deadlines.enter(current, time.monotonic() + seconds, droppable)
    try:
        ended[name] = "read " + ours.recv(16).decode()
    except TimeoutError:
        ended[name] = "timed out"
    finally:
        deadlines.leave(current)

readers = [
    gevent.spawn(reader, "late", 0.1, False),
    gevent.spawn(reader, "busy", 60, False),
    gevent.spawn(reader, "idle", 60, True),
]
gevent.sleep(0.1 + 3 * SWEEP_S)
print("before stop:", sorted(ended.items()), len(deadlines.waiting), flush=True)
deadlines.drop_idle()
gevent.sleep(0.05)
print("after stop:", sorted(ended.items()), flush=True)
pairs["busy"][1].sendall(b"request")
gevent.joinall(readers, timeout=5)
print("at end:", sorted(ended.items()), len(deadlines.waiting), flush=True)
"""


def test_sweep_ends_waits_past_their_deadline_and_idle_ones_when_stopping():
    done = run_script(READERS)
    assert done.stdout.splitlines() == [
        "before stop: [('late', 'timed out')] 2",
        "after stop: [('idle', 'timed out'), ('late', 'timed out')]",
        "at end: [('busy', 'read request'), ('idle', 'timed out'), "
        "('late', 'timed out')] 0",
    ], done.stdout + done.stderr
