"""The router's mDNS: announce `_herd._tcp.local.` and list `herd node` agents.

Runs as one background greenlet per router worker, but only the worker that
holds `STATE_DIR/mdns.lock` speaks (several workers would answer every
question several times). It follows the served manifest: with
`discovery.mdns.enabled: false` no socket is opened and nothing is sent; when
it turns off at a reload, a goodbye goes out and the socket closes. Agents
heard announcing `_herd-node._tcp.local.` are written to the membership
database as candidates, so `herd status` can show who is out there and not
(yet) admitted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.digits import decimal
from herd.discovery import mdns
from herd.discovery.membership import Membership
from herd.manifest.model import Fleet

log = logging.getLogger("herd.discovery")

CHECK_S = 1.0
#: After the responder failed (e.g. the port is taken), wait this long.
RETRY_S = 10.0


def bind_port(listen: str) -> int:
    """The port of a HOST:PORT listen address (the router's default otherwise)."""
    _, _, port = listen.rpartition(":")
    number = decimal(port, 5)
    return 11435 if number is None else number


def host_label() -> str:
    name = "".join(
        c if c.isalnum() or c == "-" else "-" for c in socket.gethostname().lower()
    )
    return (name.strip("-") or "router")[:40]


class RouterMdns:
    """Keeps the mDNS responder in step with the manifest (call `run`)."""

    def __init__(
        self,
        fleet: Callable[[], Fleet],
        membership: Membership,
        *,
        port: Callable[[], int],
        fingerprints: Callable[[Fleet], list[str]],
        lock_path: Path | None = None,
    ):
        self._fleet = fleet
        self.membership = membership
        self._port = port
        self._fingerprints = fingerprints
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self.responder: Any = None
        self._greenlet: Any = None
        self._config: tuple | None = None
        self._stop_responder = False
        self._retry_at = 0.0

    def run(self, stopped: Callable[[], bool]) -> None:
        import gevent

        try:
            while not stopped():
                try:
                    self.step()
                except Exception:  # noqa: BLE001 - discovery must not kill the router
                    log.exception("mDNS step failed")
                gevent.sleep(CHECK_S)
        finally:
            self.stop()

    def step(self) -> None:
        """Start, restart or stop the responder to match the manifest."""
        fleet = self._fleet()
        disc = fleet.discovery
        if not disc.mdns_enabled:
            self.stop()
            return
        if not self._locked():
            return
        if self._greenlet is not None and self._greenlet.dead:
            # The responder failed (its error is logged); try again later.
            self._greenlet, self.responder = None, None
            self._retry_at = time.monotonic() + RETRY_S
        if time.monotonic() < self._retry_at:
            return
        from herd.discovery import mdnsnet

        chosen = mdnsnet.interfaces(disc.mdns_interfaces, disc.mdns_networks)
        config = (
            tuple(chosen),
            fleet.name,
            self._port(),
            tuple(self._fingerprints(fleet)),
        )
        if config != self._config:
            self.stop()
            if not chosen:
                log.warning("mDNS on, but no interface has an address in networks")
                self._config = config
                return
            self._start(mdnsnet, chosen, config)
        if self.responder is not None:
            self.membership.set_candidates(self.responder.found(mdns.NODE_TYPE))

    def _start(self, mdnsnet: Any, chosen: list, config: tuple) -> None:
        import gevent

        _, fleet_name, port, fingerprints = config
        host = f"herd-{host_label()}.local."

        def services(iface: Any) -> list[mdns.Service]:
            txt = {
                "v": "1",
                "path": "/",
                "heartbeat": "/fleet/heartbeat",
                "fleet": fleet_name[:60],
                "fp": ",".join(fingerprints),
            }
            return [
                mdns.Service(
                    mdns.ROUTER_TYPE,
                    f"herd {fleet_name}"[:63],
                    host,
                    port,
                    txt,
                    iface.addresses,
                )
            ]

        self._stop_responder = False
        self.responder = mdnsnet.Responder(chosen, services, [mdns.NODE_TYPE])
        self._greenlet = gevent.spawn(self.responder.run, lambda: self._stop_responder)
        self._config = config
        log.warning(
            "mDNS: announcing %s on %s",
            mdns.ROUTER_TYPE,
            ", ".join(i.name for i in chosen),
        )

    def stop(self) -> None:
        """Goodbye and close (no-op when not running)."""
        if self._greenlet is not None:
            self._stop_responder = True
            self._greenlet.join(timeout=2)
            self._greenlet.kill(block=False)
            self._greenlet = None
        self.responder = None
        self._config = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _locked(self) -> bool:
        if self._lock_fd is not None or self._lock_path is None:
            return True
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True
