"""The blob sender process on its own: exact bytes, errors reported, low priority.

Driven like the router's worker drives it (a SOCK_SEQPACKET pair, the client's
socket and the blob passed with SCM_RIGHTS), against real loopback TCP."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading

import pytest

from herd.router.http.blobsender import REPLY, REQUEST


@pytest.fixture
def sender():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "herd.router.http.blobsender",
            str(theirs.fileno()),
            "idle",
        ],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    ours.settimeout(30)
    yield ours, proc
    ours.close()
    proc.wait(10)


def connection():
    """A connected loopback pair: (server side, non-blocking as gevent's; client)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=30)
        server, _ = listener.accept()
    server.setblocking(False)
    return server, client


def hand(control, ident, server, blob, offset, length):
    fd = os.open(blob, os.O_RDONLY)
    try:
        socket.send_fds(
            control, [REQUEST.pack(ident, offset, length)], [server.fileno(), fd]
        )
    finally:
        os.close(fd)


def test_sends_exactly_the_slice_and_reports_it(sender, tmp_path):
    control, proc = sender
    blob = tmp_path / "blob"
    data = os.urandom(3 << 20) + b"tail"
    blob.write_bytes(data)
    got = {}
    transfers = [(1, 5, len(data) - 6), (2, len(data) - 1, 1), (3, 0, 5 << 19)]
    clients, servers = [], []  # the worker keeps its socket, as the router's
    for ident, offset, length in transfers:
        server, client = connection()
        hand(control, ident, server, blob, offset, length)
        clients.append(client)
        servers.append(server)

    def read(client, ident, length):
        chunks = []
        while length > 0:
            chunk = client.recv(min(length, 1 << 20))
            assert chunk
            chunks.append(chunk)
            length -= len(chunk)
        got[ident] = b"".join(chunks)

    readers = [
        threading.Thread(target=read, args=(c, ident, length))
        for c, (ident, _, length) in zip(clients, transfers, strict=True)
    ]
    for t in readers:
        t.start()
    replies = {}
    for _ in transfers:
        ident, result = REPLY.unpack(control.recv(64))
        replies[ident] = result
    for t in readers:
        t.join(30)
    for ident, offset, length in transfers:
        assert replies[ident] == length
        assert got[ident] == data[offset : offset + length]
    # The connection stays open for the worker's next response.
    for client in clients:
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(1)
        client.close()
    for server in servers:
        server.close()
    assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 19
    assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE


def test_a_client_that_hangs_up_and_a_blob_that_shrank_are_errors(sender, tmp_path):
    control, _ = sender
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * (64 << 20))
    server, client = connection()
    client.close()
    hand(control, 7, server, blob, 0, 64 << 20)
    server.close()
    ident, result = REPLY.unpack(control.recv(64))
    assert ident == 7 and result in (-errno.EPIPE, -errno.ECONNRESET)

    server, client = connection()
    hand(control, 8, server, blob, (64 << 20) - 10, 100)
    ident, result = REPLY.unpack(control.recv(64))
    assert ident == 8 and result == -errno.ENODATA
    server.close()
    assert client.recv(100) == b"x" * 10
    assert client.recv(100) == b""
    client.close()


def test_exits_when_the_worker_goes_away(sender):
    control, proc = sender
    control.close()
    assert proc.wait(10) == 0


def test_a_sender_that_cannot_start_leaves_the_sending_to_the_worker(
    tmp_path, monkeypatch
):
    """No sender (here: no Python to start it with): the worker sends the body
    itself, exactly, and does not retry the start on every request."""
    from herd.router.api import registry
    from herd.router.http.blobsender import SenderClient, SenderUnavailable

    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    client = SenderClient("idle")
    blob = tmp_path / "blob"
    data = os.urandom(3 << 20)
    blob.write_bytes(data)
    ours, theirs = socket.socketpair()
    got = bytearray()

    def read():
        while chunk := theirs.recv(1 << 20):
            got.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    head = b"".join(registry._handoff(client, ours, blob, 5, len(data) - 5))
    ours.shutdown(socket.SHUT_WR)
    reader.join(30)
    assert head + got == data[5:]
    with pytest.raises(SenderUnavailable):  # not started again at once
        client.send(ours, 0, 0, 1)
    ours.close()
    theirs.close()
