"""systemd readiness, reload and stop for the router's gunicorn master.

gunicorn itself sends READY=1 when its master has bound the sockets, before
any worker exists, so a unit ordered after herd-router would start against a
router that cannot answer yet. herd takes `NOTIFY_SOCKET` away from gunicorn
(`take_notify_socket`, called by etc/gunicorn.conf.py) and `Supervisor`,
installed by the `when_ready` hook in the master, sends instead:

- READY=1 once a worker answers `GET /readyz` over the listening socket: the
  app is built, so the manifest is loaded. It waits up to `NODE_WAIT_S` more
  for /readyz to report a node up (200); a fleet whose nodes are all down
  still becomes ready then, saying so in STATUS= (the router must run to
  report that).
- On SIGHUP (`systemctl reload`): RELOADING=1, the state pointer is repaired
  from herd.db if needed (what `herd serve` does at start), and READY=1 once
  /readyz reports the applied revision (or that it was refused). Workers are
  not restarted, so no stream is dropped; every worker re-reads the pointer
  by itself within half a second.
- On SIGTERM, SIGINT or SIGQUIT: STOPPING=1, then gunicorn's own stop (TERM:
  workers stop accepting and running streams get `graceful_timeout`).

Notifications are plain AF_UNIX datagrams (what sd_notify(3) sends). The
unit's main process is `herd serve`, which runs the gunicorn master as its
child and passes signals on to it, hence `NotifyAccess=all` in the unit.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("herd.router")

#: Longest wait after the first answer from a worker for a node to be up.
NODE_WAIT_S = 10.0
#: Longest wait for a worker to answer at all (systemd's start timeout is 90 s).
START_WAIT_S = 85.0
#: Longest wait for the workers to serve the applied revision after a reload.
RELOAD_WAIT_S = 10.0
PROBE_TIMEOUT_S = 2.0
#: `_wait_ready` after a reload whose applied revision could not be read.
ANY = -1
PROBE_EVERY_S = 0.1


def take_notify_socket() -> str | None:
    """Remove $NOTIFY_SOCKET from the environment (gunicorn, and the workers it
    forks, then see none) and return it, for the master's `Supervisor`."""
    return os.environ.pop("NOTIFY_SOCKET", None) or None


def notify(address: str | None, *fields: str) -> bool:
    """Send one sd_notify message ("READY=1", "STATUS=..."); False if it failed."""
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
            sock.sendto("\n".join(fields).encode(), target)
    except OSError as ex:
        log.warning("systemd notify to %s failed: %s", address, ex)
        return False
    return True


def monotonic_usec() -> str:
    """MONOTONIC_USEC= for RELOADING=1 (systemd 253+ uses it; older ignore it)."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def probe_address(sockname: Any, family: int) -> tuple[int, Any]:
    """Where the master reaches a listener: wildcard binds via loopback."""
    if family == socket.AF_UNIX:
        return family, sockname
    host, port = sockname[0], sockname[1]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return family, (host, port)


def get_readyz(family: int, address: Any) -> tuple[int, dict[str, Any]]:
    """GET /readyz over the given socket address: (status, body)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(PROBE_TIMEOUT_S)
    try:
        sock.connect(address)
        conn = http.client.HTTPConnection("localhost", timeout=PROBE_TIMEOUT_S)
        conn.sock = sock
        conn.request("GET", "/readyz", headers={"Connection": "close"})
        reply = conn.getresponse()
        raw = reply.read(65536)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        return reply.status, body if isinstance(body, dict) else {}
    finally:
        sock.close()


class Supervisor:
    """Readiness, reload and stop notifications for one gunicorn arbiter."""

    def __init__(
        self,
        server: Any,
        address: str | None,
        *,
        state_dir: str | None = None,
        probe: Callable[[int, Any], tuple[int, dict[str, Any]]] = get_readyz,
    ):
        self.server = server
        self.address = address
        self.state_dir = state_dir
        self.probe = probe
        self._lock = threading.Lock()

    def install(self) -> None:
        """Wrap the arbiter's signal handlers and start waiting for a worker."""
        server = self.server
        # gunicorn's own HUP would replace every worker; see the module docstring.
        server.handle_hup = self.reload
        for name in ("handle_term", "handle_int", "handle_quit"):
            setattr(server, name, self._stopping(getattr(server, name)))
        if self.address:  # not under systemd: nobody to tell, so no probes
            self._spawn(self._wait_ready, START_WAIT_S, None)

    def _stopping(self, original: Callable[[], None]) -> Callable[[], None]:
        def handler() -> None:
            notify(self.address, "STOPPING=1", "STATUS=stopping: draining streams")
            original()

        return handler

    def reload(self) -> None:
        """SIGHUP: re-read the applied revision; READY=1 once it is served.

        Runs in the arbiter's loop, so the state store is read on a thread.
        """
        log.info("reload: re-reading the applied revision (workers stay)")
        notify(self.address, "RELOADING=1", monotonic_usec(), "STATUS=reloading")
        self._spawn(self._reload)

    def _reload(self) -> None:
        revision = self._applied_revision()
        if not self.address:
            return
        # No readable revision: the workers keep theirs; any answer completes.
        self._wait_ready(RELOAD_WAIT_S, ANY if revision is None else revision)

    def _applied_revision(self) -> int | None:
        """The revision `current.json` names, after repairing it from herd.db."""
        if not self.state_dir:
            return None
        from herd.store import DB_NAME, Store, read_pointer

        try:
            if os.path.exists(os.path.join(self.state_dir, DB_NAME)):
                store = Store(self.state_dir, create=False)
                try:
                    repaired = store.sync_pointer()
                finally:
                    store.close()
                if repaired:
                    log.warning("reload: %s", repaired)
            pointer = read_pointer(self.state_dir)
        except Exception as ex:  # noqa: BLE001 - a reload must never kill the master
            log.error("reload: cannot read the applied revision: %s", ex)
            return None
        return pointer.revision if pointer else None

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.name = "herd-readiness"
        thread.start()

    def _targets(self) -> list[tuple[int, Any]]:
        targets = []
        for listener in list(getattr(self.server, "LISTENERS", [])):
            sock = getattr(listener, "sock", listener)
            try:
                targets.append(probe_address(sock.getsockname(), sock.family))
            except OSError:
                continue
        return targets

    def _wait_ready(self, bound_s: float, revision: int | None) -> None:
        """Probe /readyz until ready (see the module docstring), then READY=1.

        `revision` is None at start; after a reload it is the applied revision
        the workers must serve (or refuse, with the reason in STATUS=).
        """
        with self._lock:  # one wait at a time: a second HUP queues behind
            started = time.monotonic()
            answered_at: float | None = None
            status_line = "no worker answered /readyz"
            while time.monotonic() - started < bound_s:
                result = self._probe_once()
                now = time.monotonic()
                if result is not None:
                    status, body = result
                    answered_at = now if answered_at is None else answered_at
                    status_line = _status_line(status, body)
                    if _ready(status, body, revision, now - answered_at):
                        break
                time.sleep(PROBE_EVERY_S)
            else:
                if answered_at is None and revision is None:
                    # Never ready: systemd's start timeout fails the unit.
                    log.error("not ready: %s after %.0f s", status_line, bound_s)
                    notify(self.address, f"STATUS={status_line}")
                    return
            notify(self.address, "READY=1", f"STATUS={status_line}")
            log.info("ready: %s", status_line)

    def _probe_once(self) -> tuple[int, dict[str, Any]] | None:
        for family, address in self._targets():
            try:
                return self.probe(family, address)
            except (OSError, http.client.HTTPException):
                continue
        return None


def _ready(
    status: int, body: dict[str, Any], revision: int | None, waited: float
) -> bool:
    """Whether one /readyz answer completes a start (revision None) or reload."""
    if revision is None:
        return status == 200 or waited >= NODE_WAIT_S
    if revision == ANY:
        return True
    if body.get("revision") == revision:
        return True
    # Refused: the workers keep the old revision (they re-check every 0.5 s,
    # so an error older than that may be stale).
    return bool(body.get("reload_refused")) and waited >= 1.0


def _status_line(status: int, body: dict[str, Any]) -> str:
    up = body.get("nodes_up") or 0
    count = len(up) if isinstance(up, list) else int(up)
    text = f"serving revision {body.get('revision')}, {count} node(s) up"
    if status != 200:
        text += " (no node up yet: /readyz answers 503)"
    if body.get("reload_refused"):
        text += "; the applied revision was refused (see herd status)"
    return text
