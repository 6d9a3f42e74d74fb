"""The blob sender: a low-priority helper process that streams registry blobs.

A node pulling a model fetches gigabytes in parallel `Range` GETs. Sent from
the gunicorn worker, every piece of every pull takes a turn on the worker's
event loop, and a chat request waits behind all of them. So the worker sends
only the response head (and the first bytes) itself, then hands the rest to
this process: over a Unix socket pair it passes the client's connection and
the open blob file (SCM_RIGHTS) with the offset and length. The sender runs at
the lowest CPU priority (nice 19, SCHED_IDLE where allowed), sends the bytes
with `sendfile` (page cache to socket, nothing copied through its memory),
then answers with the byte count; the worker's request greenlet, parked until
then at no CPU cost, finishes the response and keeps the connection alive for
the next request. The kernel's scheduler, not the worker's loop, now decides
who waits: chat requests first, pulls with what is left.

Wire format: worker -> sender, one SOCK_SEQPACKET message per transfer,
`ID OFFSET LENGTH` (three unsigned 64-bit, network order) carrying two file
descriptors (socket, blob); sender -> worker, `ID RESULT` (RESULT = bytes sent,
or minus an errno). The sender exits when the worker's end closes.

Run as `python -m herd.router.http.blobsender FD idle|nice` (started by
`SenderClient`; HERD_BLOB_SENDER picks the priority, or `off` for none).
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any

REQUEST = struct.Struct("!QQQ")
REPLY = struct.Struct("!Qq")
#: Bytes per `sendfile` call, and per turn of one transfer before the others.
PIECE = 1 << 20
TURN = 4 << 20
#: A client that takes no bytes for this long is dropped.
IDLE_S = 60.0


def lower_priority(idle: bool) -> None:
    """Make this process yield the CPU to everything else on the host: nice 19,
    and with `idle` SCHED_IDLE too (it runs only when a CPU has nothing else
    to do; nice 19 still gets a small share under full load)."""
    try:
        # Also drops a real-time policy inherited from a router run under one.
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    except OSError:
        pass


class Transfer:
    """One body being sent: `length` bytes of `blob` from `offset` to `sock`."""

    def __init__(self, ident: int, sock: int, blob: int, offset: int, length: int):
        self.ident, self.sock, self.blob = ident, sock, blob
        self.offset, self.left, self.sent = offset, length, 0
        self.touched = time.monotonic()

    def pump(self) -> bool:
        """Send until the socket is full or this turn is used; True when done.

        Raises OSError when the client went away or the blob shrank."""
        budget = TURN
        while self.left > 0 and budget > 0:
            try:
                n = os.sendfile(
                    self.sock, self.blob, self.offset, min(self.left, PIECE)
                )
            except BlockingIOError:
                return False
            if n == 0:
                raise OSError(errno.ENODATA, "the blob shrank while being sent")
            self.offset += n
            self.left -= n
            self.sent += n
            budget -= n
            self.touched = time.monotonic()
        return self.left == 0

    def close(self) -> None:
        for fd in (self.sock, self.blob):
            try:
                os.close(fd)
            except OSError:
                pass


class Sender:
    """The sender's event loop: control messages in, transfers out, replies back."""

    def __init__(self, control: socket.socket):
        self.control = control
        self.selector = selectors.DefaultSelector()
        self.selector.register(control, selectors.EVENT_READ)
        self.transfers: dict[int, Transfer] = {}

    def run(self) -> None:
        while True:
            for key, _ in self.selector.select(timeout=1.0):
                if key.fileobj is self.control:
                    if not self._accept():
                        return
                else:
                    self._pump(key.data)
            self._sweep()

    def _accept(self) -> bool:
        """Take one request from the worker; False when the worker is gone."""
        fds: list[int] = []
        try:
            msg, fds, _, _ = socket.recv_fds(self.control, REQUEST.size, 2)
        except OSError:
            return False
        if not msg:
            return False
        if len(msg) != REQUEST.size or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return True
        ident, offset, length = REQUEST.unpack(msg)
        transfer = Transfer(ident, fds[0], fds[1], offset, length)
        self.transfers[transfer.sock] = transfer
        self.selector.register(transfer.sock, selectors.EVENT_WRITE, transfer)
        return True

    def _pump(self, transfer: Transfer) -> None:
        try:
            done = transfer.pump()
        except OSError as ex:
            self._finish(transfer, -(ex.errno or errno.EIO))
            return
        if done:
            self._finish(transfer, transfer.sent)

    def _sweep(self) -> None:
        """Drop transfers whose client has taken nothing for IDLE_S."""
        now = time.monotonic()
        for transfer in list(self.transfers.values()):
            if now - transfer.touched > IDLE_S:
                self._finish(transfer, -errno.ETIMEDOUT)

    def _finish(self, transfer: Transfer, result: int) -> None:
        self.selector.unregister(transfer.sock)
        del self.transfers[transfer.sock]
        transfer.close()
        try:
            self.control.send(REPLY.pack(transfer.ident, result))
        except OSError:
            pass  # the worker is gone; run() sees it next


def main(argv: list[str]) -> int:
    """Serve the control socket passed as file descriptor `argv[0]`, at the
    priority `argv[1]` names (`idle` or `nice`)."""
    # Its life is the worker's: a stop signal to the whole process group (^C,
    # systemd) must not cut pulls that the stopping worker lets finish. The
    # worker's end closing (however it ends) ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = socket.socket(fileno=int(argv[0]))
    control.setblocking(True)
    lower_priority(argv[1:2] != ["nice"])
    Sender(control).run()
    return 0


class SenderUnavailable(OSError):
    """The sender could not take the transfer; nothing was sent (fall back)."""


class _Channel:
    """One running sender process and the transfers waiting for its replies."""

    def __init__(self, control: socket.socket, proc: object):
        self.control, self.proc = control, proc
        self.waiting: dict[int, object] = {}
        self.open = True


class SenderClient:
    """The worker's side: starts the sender on first use, hands bodies to it.

    Used from gevent greenlets only (the router's worker). A sender that dies
    fails the transfers in flight (their connections are dropped) and is
    started afresh by the next transfer; one that cannot be started makes
    `send` raise SenderUnavailable for RETRY_S, so the caller sends itself.
    """

    RETRY_S = 30.0

    def __init__(self, mode: str = "idle") -> None:
        self.mode = mode
        self._channel: _Channel | None = None
        self._failed_at = -self.RETRY_S
        self._next = 0
        self._starting: Any = None

    def send(self, sock: socket.socket, blob: int, offset: int, length: int) -> None:
        """Send `length` bytes of the open file `blob` from `offset` on `sock`.

        Returns once all were sent; OSError when the client went away, timed
        out or the blob shrank (the connection must then be dropped)."""
        from gevent.event import AsyncResult

        channel = self._get()
        self._next += 1
        ident = self._next
        waiter = AsyncResult()
        channel.waiting[ident] = waiter
        try:
            try:
                socket.send_fds(
                    channel.control,
                    [REQUEST.pack(ident, offset, length)],
                    [sock.fileno(), blob],
                )
            except OSError as ex:
                self._lost(channel)
                raise SenderUnavailable(ex.errno, f"blob sender: {ex}") from ex
            result = waiter.get()
        finally:
            channel.waiting.pop(ident, None)
        if result < 0:
            raise OSError(-result, os.strerror(-result))

    def _get(self) -> _Channel:
        channel = self._channel
        if channel is not None and channel.open:
            return channel
        if self._starting is None:
            from gevent.lock import Semaphore

            self._starting = Semaphore()
        with self._starting:  # one start, however many requests arrive meanwhile
            channel = self._channel
            if channel is not None and channel.open:
                return channel
            if time.monotonic() - self._failed_at < self.RETRY_S:
                raise SenderUnavailable(errno.EAGAIN, "blob sender unavailable")
            try:
                self._channel = channel = self._start(self.mode)
            except OSError as ex:
                self._failed_at = time.monotonic()
                raise SenderUnavailable(ex.errno, f"blob sender: {ex}") from ex
            return channel

    @staticmethod
    def _start(mode: str) -> _Channel:
        import subprocess

        import gevent

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno()), mode],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        channel = _Channel(ours, proc)
        gevent.spawn(SenderClient._replies, channel)
        return channel

    @staticmethod
    def _replies(channel: _Channel) -> None:
        """Deliver the sender's replies until it goes away."""
        try:
            while True:
                msg = channel.control.recv(REPLY.size)
                if len(msg) != REPLY.size:
                    break
                ident, result = REPLY.unpack(msg)
                waiter = channel.waiting.get(ident)
                if waiter is not None:
                    waiter.set(result)
        except OSError:
            pass
        SenderClient._lost(channel)

    @staticmethod
    def _lost(channel: _Channel) -> None:
        """The sender is gone: fail what waits on it, reap the process."""
        if not channel.open:
            return
        channel.open = False
        for waiter in list(channel.waiting.values()):
            waiter.set(-errno.EPIPE)
        channel.control.close()
        try:
            channel.proc.kill()
            channel.proc.wait(5)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
