"""mDNS on the wire: one UDP socket on the chosen interfaces, and a responder
and browser loop around it (gevent).

The socket joins 224.0.0.251 only on the chosen interfaces, sends with TTL
255 out of each of them in turn, and drops any packet that arrived on another
interface (IP_PKTINFO). It sends nothing but mDNS: announcements (twice at
start), answers to questions about our own services, queries with known
answers while browsing (1 s, then doubling to 60 s, and again when a record
reaches 80% of its TTL), and goodbyes (TTL 0) when stopped. IPv4 only.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.flags
import psutil

from herd.discovery import mdns
from herd.discovery.mdnscache import Cache

log = logging.getLogger("herd.discovery")

ANNOUNCE_GAP_S = 1.0
QUERY_MIN_S = 1.0
QUERY_MAX_S = 60.0
_PKTINFO = struct.Struct("=i4s4s")
#: Linux's value; Python 3.11's socket module does not export it.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    address: str
    network: ipaddress.IPv4Network


def interfaces(
    names: Sequence[str] = (),
    networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> list[Interface]:
    """The interfaces to use: those named, else those with an IPv4 address
    inside `networks`, else every non-loopback interface that is up."""
    stats = psutil.net_if_stats()
    out = []
    for name, addrs in psutil.net_if_addrs().items():
        if names and name not in names:
            continue
        if not stats.get(name) or not stats[name].isup:
            continue
        for addr in addrs:
            if addr.family != socket.AF_INET or not addr.netmask:
                continue
            iface = ipaddress.IPv4Interface(f"{addr.address}/{addr.netmask}")
            if not names:
                if networks and not any(iface.ip in n for n in networks):
                    continue
                if not networks and iface.ip.is_loopback:
                    continue
            out.append(
                Interface(
                    name, socket.if_nametoindex(name), addr.address, iface.network
                )
            )
            break
    return out


class Endpoint:
    """A UDP socket on port 5353 joined to the group on the given interfaces."""

    def __init__(self, chosen: Sequence[Interface]):
        from gevent import socket as gsocket

        self.interfaces = list(chosen)
        self.by_index = {i.index: i for i in self.interfaces}
        sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind(("", mdns.PORT))
            group = socket.inet_aton(mdns.GROUP_V4)
            for iface in self.interfaces:
                mreqn = (
                    group
                    + socket.inet_aton(iface.address)
                    + struct.pack("=i", iface.index)
                )
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def send(self, data: bytes, iface: Interface | None = None) -> None:
        """Multicast `data` out of one interface (default: each chosen one)."""
        for target in [iface] if iface else self.interfaces:
            mreqn = struct.pack(
                "=4s4si", b"\0" * 4, socket.inet_aton(target.address), target.index
            )
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                self.sock.sendto(data, (mdns.GROUP_V4, mdns.PORT))
            except OSError as ex:
                log.debug("mDNS send on %s failed: %s", target.name, ex)

    def reply(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, address)
        except OSError as ex:
            log.debug("mDNS unicast reply to %s failed: %s", address, ex)

    def receive(
        self, timeout: float
    ) -> tuple[bytes, tuple[str, int], Interface] | None:
        """One packet from a chosen interface, or None after `timeout`."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, address = self.sock.recvmsg(
                mdns.MAX_PACKET + 1, socket.CMSG_SPACE(_PKTINFO.size)
            )
        except TimeoutError:
            return None
        index = None
        for level, kind, payload in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                index = _PKTINFO.unpack_from(payload)[0]
        iface = self.by_index.get(index) if index is not None else None
        if iface is None:
            return (b"", address, None)  # another interface: ignored
        return data, address, iface

    def close(self) -> None:
        self.sock.close()


class Responder:
    """Announce `services()` and browse `kinds` on `chosen` interfaces."""

    def __init__(
        self,
        chosen: Sequence[Interface],
        services: Callable[[Interface], Iterable[mdns.Service]],
        kinds: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.chosen = list(chosen)
        self.services = services
        self.kinds = list(kinds)
        self.clock = clock
        self.cache = Cache()
        self.endpoint: Endpoint | None = None
        self._announced: dict[str, list[mdns.Service]] = {}

    def found(self, kind: str) -> list[mdns.Found]:
        return self.cache.services(kind, self.clock())

    def run(self, stopped: Callable[[], bool]) -> None:
        """Until `stopped()`: announce, answer, browse; then say goodbye."""
        self.endpoint = endpoint = Endpoint(self.chosen)
        try:
            self._loop(endpoint, stopped)
        finally:
            self.goodbye()
            endpoint.close()
            self.endpoint = None

    def announce(self) -> None:
        if self.endpoint is None:
            return
        for iface in self.chosen:
            services = list(self.services(iface))
            self._announced[iface.name] = services
            if services:
                self.endpoint.send(mdns.announcement(services), iface)

    def goodbye(self) -> None:
        if self.endpoint is None:
            return
        for iface in self.chosen:
            services = self._announced.get(iface.name) or []
            if services:
                self.endpoint.send(mdns.announcement(services, goodbye=True), iface)
        self._announced.clear()

    def _loop(self, endpoint: Endpoint, stopped: Callable[[], bool]) -> None:
        now = self.clock()
        announce_at = [now, now + ANNOUNCE_GAP_S]
        query_gap = QUERY_MIN_S
        query_at = now
        while not stopped():
            now = self.clock()
            if announce_at and now >= announce_at[0]:
                announce_at.pop(0)
                self.announce()
            if self.kinds and (
                now >= query_at
                or any(self.cache.refresh_due(k, now) for k in self.kinds)
            ):
                for kind in self.kinds:
                    endpoint.send(mdns.query(kind, self.cache, now))
                query_at = now + query_gap
                query_gap = min(query_gap * 2, QUERY_MAX_S)
            self.cache.expire(now)
            wait = min([query_at - now, *(a - now for a in announce_at), 0.5])
            packet = endpoint.receive(max(0.05, wait))
            if packet is not None and packet[2] is not None:
                try:
                    self._handle(*packet)
                except Exception as ex:  # noqa: BLE001 - a packet must not stop us
                    log.debug("mDNS: packet from %s not handled: %s", packet[1], ex)

    def _handle(self, data: bytes, address: tuple[str, int], iface: Interface) -> None:
        try:
            message, unicast = mdns.parse(data)
        except mdns.BadPacket as ex:
            log.debug("mDNS: ignored a bad packet from %s: %s", address[0], ex)
            return
        if message.flags & dns.flags.QR:
            if address[1] == mdns.PORT:  # responses from port 5353 only
                self.cache.add(message, self.clock())
            return
        services = self._announced.get(iface.name) or list(self.services(iface))
        legacy = address[1] != mdns.PORT
        reply = mdns.answer(message, services, legacy=legacy)
        if reply is None or self.endpoint is None:
            return
        if legacy or unicast:
            self.endpoint.reply(reply, address)
        else:
            self.endpoint.send(reply, iface)
