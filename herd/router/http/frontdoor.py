"""The front door's per-worker state: its limits and the listening server.

`FrontDoor` holds the limits one worker applies (from gunicorn's `keepalive`
and herd's settings). `RouterServer` is pywsgi's server with what spans
connections: the count of connections per client address (HERD_CLIENT_CONNECTIONS),
the deadlines of blocked reads (deadlines.py; a stopping worker drops the
idle keep-alive connections among them at once), and
SERVER_NAME taken from the bind address as given (pywsgi looks it up with
`socket.getfqdn`: a reverse-DNS query that stalls start-up without DNS).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from gunicorn.workers.ggevent import PyWSGIServer

from herd.router.http.deadlines import Deadlines
from herd.settings import BODY_TIMEOUT, CLIENT_CONNECTIONS, HEADER_TIMEOUT

log = logging.getLogger("herd.router.http.worker")

#: Refused connections are logged at most once per this many seconds.
REFUSED_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class FrontDoor:
    """The limits one worker applies to its client connections."""

    #: Seconds an idle keep-alive connection is held (0: no keep-alive).
    keepalive: float
    header_timeout: float
    body_timeout: float
    #: Most simultaneous connections from one client address.
    client_connections: int

    @classmethod
    def from_settings(cls, keepalive: float, worker_connections: int) -> FrontDoor:
        per_client = CLIENT_CONNECTIONS.resolve()
        return cls(
            keepalive=keepalive,
            header_timeout=HEADER_TIMEOUT.resolve(),
            body_timeout=BODY_TIMEOUT.resolve(),
            client_connections=per_client or max(1, worker_connections // 4),
        )


class RouterServer(PyWSGIServer):
    """pywsgi's server with the per-address count, the read deadlines and no DNS."""

    def __init__(self, *args: Any, frontdoor: FrontDoor, **kwargs: Any):
        self.frontdoor = frontdoor
        self.connections: dict[str, int] = {}
        self.deadlines = Deadlines()
        self.closing = False
        self._refused = 0
        self._refused_logged = 0.0
        super().__init__(*args, **kwargs)
        #: Whether gunicorn's own access log is on (read once: a property of
        #: gunicorn's logger behind pywsgi's adapter, costly per request).
        self.access_log_enabled = bool(getattr(self.log, "access_log_enabled", True))

    def update_environ(self) -> None:
        """SERVER_NAME and SERVER_PORT from the bind address, with no lookup."""
        address = self.address
        if isinstance(address, tuple):
            self.environ.setdefault("SERVER_NAME", str(address[0]))
            self.environ.setdefault("SERVER_PORT", str(address[1]))
        else:
            self.environ.setdefault("SERVER_NAME", "")
            self.environ.setdefault("SERVER_PORT", "")

    def admit(self, source: str) -> bool:
        count = self.connections.get(source, 0)
        if count >= self.frontdoor.client_connections:
            return False
        self.connections[source] = count + 1
        return True

    def release(self, source: str) -> None:
        count = self.connections.get(source, 1) - 1
        if count > 0:
            self.connections[source] = count
        else:
            self.connections.pop(source, None)

    def note_refused(self, source: str) -> None:
        """Log refused connections, at most one line per REFUSED_LOG_EVERY_S."""
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= REFUSED_LOG_EVERY_S:
            log.warning(
                "refused %d connection(s) over the limit of %d per client address "
                "(latest from %s; HERD_CLIENT_CONNECTIONS)",
                self._refused,
                self.frontdoor.client_connections,
                source,
            )
            self._refused = 0
            self._refused_logged = now

    def close(self) -> None:
        """Stop accepting, and close idle keep-alive connections (a stopping
        worker then waits only for requests in flight)."""
        self.closing = True
        super().close()
        self.deadlines.drop_idle()
