"""`herd node --lan-proxy ADDR:PORT`: expose a loopback-only Ollama to the router.

A gevent TCP relay bound to ADDR:PORT (a LAN address of this host). A
connection is accepted only when its source address is the router's (the
address of `--router`, or of the router found by mDNS, followed as it
changes); anything else is closed at once, before a byte is read, with one
log line per refused address. Accepted connections are piped both ways to the
local Ollama, byte for byte (streams included), and closed when either side
closes or stays idle past `IDLE_S`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("herd.node")

CONNECT_TIMEOUT_S = 3.0
#: A relayed connection idle this long is closed (long generations stream).
IDLE_S = 900.0
CHUNK = 65536


def router_address(router_url: str | None) -> str | None:
    if not router_url:
        return None
    host = urlsplit(router_url).hostname or ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class LanProxy:
    """The relay; `agent.router` names the one address it accepts."""

    def __init__(self, listen: str, ollama: str, agent: Any):
        host, _, port = listen.rpartition(":")
        self.listen = (host.strip("[]"), int(port))
        target = urlsplit(ollama)
        self.target = (target.hostname or "127.0.0.1", target.port or 11434)
        self.agent = agent
        self.server: Any = None
        self._refused: set[str] = set()
        self.accepted = 0

    def allowed(self, address: str) -> bool:
        router = router_address(self.agent.router)
        if router is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return str(ip) == router

    def start(self) -> None:
        from gevent.server import StreamServer

        self.server = StreamServer(self.listen, self._serve)
        self.server.start()
        log.info(
            "LAN proxy on %s:%d -> %s:%d (router only)", *self.listen, *self.target
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None

    def _serve(self, client: Any, address: tuple) -> None:
        import gevent
        from gevent import socket as gsocket

        if not self.allowed(address[0]):
            if address[0] not in self._refused:
                self._refused.add(address[0])
                log.warning(
                    "LAN proxy: refused %s (only the router, %s, may connect)",
                    address[0],
                    router_address(self.agent.router) or "not known yet",
                )
            client.close()
            return
        try:
            upstream = gsocket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
        except OSError as ex:
            log.warning("LAN proxy: local Ollama unreachable: %s", ex)
            client.close()
            return
        self.accepted += 1
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(IDLE_S)
        jobs = [
            gevent.spawn(_pipe, client, upstream),
            gevent.spawn(_pipe, upstream, client),
        ]
        gevent.joinall(jobs)
        client.close()
        upstream.close()


def _pipe(source: Any, sink: Any) -> None:
    """Copy until EOF or error, then half-close the other side."""
    try:
        while True:
            data = source.recv(CHUNK)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
