"""The raw reader under the worker's rfile (herd/router/http/sockreader.py):
the reads socket.SocketIO made, in a child process with gevent's hub."""

from __future__ import annotations

from tests.router.routerproc import run_script

#: Prints what each step of a connection's reads gives.
READS = """
import io, time
import gevent, gevent.socket
from herd.router.http.deadlines import Deadlines
from herd.router.http.sockreader import SocketReader

ours, theirs = gevent.socket.socketpair()
rfile = io.BufferedReader(SocketReader(ours))
gevent.spawn_later(0.05, theirs.sendall, b"GET / HTTP/1.1\\r\\n\\r\\n")
print("waited for:", rfile.peek(1)[:3], flush=True)
print("line:", rfile.readline(), flush=True)
print("rest:", rfile.read(2), flush=True)

deadlines = Deadlines()
current = gevent.getcurrent()
deadlines.enter(current, time.monotonic() + 0.01)
try:
    rfile.peek(1)
except TimeoutError:
    print("deadline: timed out", flush=True)
finally:
    deadlines.leave(current)
theirs.sendall(b"late")
try:
    rfile.read1(4)
except OSError as ex:
    print("after the timeout:", ex, flush=True)

ours2, theirs2 = gevent.socket.socketpair()
rfile2 = io.BufferedReader(SocketReader(ours2))
ours2.close()  # the reader still holds the connection open
theirs2.sendall(b"still open")
print("socket closed, reader open:", rfile2.read1(64), flush=True)
theirs2.close()
print("end of stream:", rfile2.read1(64), flush=True)
rfile2.close()
print("reader closed, socket closed:", ours2._sock.fileno() == -1, flush=True)
"""


def test_reader_waits_reads_ends_and_holds_the_socket_open():
    done = run_script(READS)
    assert done.stdout.splitlines() == [
        "waited for: b'GET'",
        "line: b'GET / HTTP/1.1\\r\\n'",
        "rest: b'\\r\\n'",
        "deadline: timed out",
        "after the timeout: cannot read from timed out object",
        "socket closed, reader open: b'still open'",
        "end of stream: b''",
        "reader closed, socket closed: True",
    ], done.stdout + done.stderr
