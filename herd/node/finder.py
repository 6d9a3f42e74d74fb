"""The agent's mDNS: find the router, and announce this node once it is found.

Browses `_herd._tcp.local.` on the chosen interfaces (default: every
non-loopback interface that is up) and takes the first router whose TXT `fp`
lists the fingerprint of our fleet key, so an agent never reports to a router
of another fleet (or an impostor without the key's fingerprint). Then it
announces `_herd-node._tcp.local.` (instance = node name, TXT url and fp) so
the router can list it even before its first heartbeat is admitted.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from herd.discovery import mdns, mdnsnet
from herd.discovery.fleetkey import FleetKey
from herd.node.agent import Agent, advertised_url

log = logging.getLogger("herd.node")

CHECK_S = 0.5


class RouterFinder:
    def __init__(
        self,
        agent: Agent,
        keys: Sequence[FleetKey],
        stop: Any,
        interface_names: Sequence[str] = (),
    ):
        self.agent = agent
        self.fingerprints = {k.fingerprint for k in keys}
        self._stop_event = stop
        self.chosen = mdnsnet.interfaces(interface_names)
        self.responder = mdnsnet.Responder(
            self.chosen, self._services, [mdns.ROUTER_TYPE]
        )
        self._greenlets: list[Any] = []
        self._stopping = False

    def start(self) -> None:
        import gevent

        if not self.chosen:
            log.warning("mDNS: no usable interface; pass --router URL")
            return
        log.info("mDNS: looking for the router on %s", self._names())
        self._greenlets = [
            gevent.spawn(self.responder.run, lambda: self._stopping),
            gevent.spawn(self._watch),
        ]

    def stop(self) -> None:
        self._stopping = True
        for greenlet in self._greenlets:
            greenlet.join(timeout=2)
            greenlet.kill(block=False)

    def _names(self) -> str:
        return ", ".join(i.name for i in self.chosen)

    def pick(self, found: Sequence[mdns.Found]) -> str | None:
        """The URL of the first router announcing our key, on our networks."""
        for router in found:
            prints = set(router.txt.get("fp", "").split(","))
            if not prints & self.fingerprints:
                continue
            for address in router.addresses:  # IPv4 first
                ip = ipaddress.ip_address(address)
                if ip.is_link_local:
                    continue  # (needs a zone: not a URL an agent can give)
                if any(ip in net for iface in self.chosen for net in iface.networks):
                    host = f"[{address}]" if ip.version == 6 else address
                    return f"http://{host}:{router.port}"
        return None

    def _watch(self) -> None:
        import gevent

        while not self._stopping:
            url = self.pick(self.responder.found(mdns.ROUTER_TYPE))
            if url and url != self.agent.router:
                log.info("mDNS: router found at %s", url)
                self.agent.router = url
                self.agent.via = "mdns"
                self.responder.announce()
            gevent.sleep(CHECK_S)

    def _services(self, iface: mdnsnet.Interface) -> list[mdns.Service]:
        router = self.agent.router
        if router is None:
            return []
        url = advertised_url(self.agent.config, router)
        port = int(url.rsplit(":", 1)[1])
        name = self.agent.config.name
        return [
            mdns.Service(
                mdns.NODE_TYPE,
                name,
                f"{name.replace('.', '-').replace('_', '-')}.local.",
                port,
                {"v": "1", "url": url, "fp": ",".join(sorted(self.fingerprints))},
                iface.addresses,
            )
        ]
