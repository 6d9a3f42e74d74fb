"""mDNS on the wire: UDP sockets on the chosen interfaces, and a responder
and browser loop around them (gevent).

Over IPv4 a socket joins 224.0.0.251, over IPv6 another joins ff02::fb, each
only on the chosen interfaces that have an address of that family; each
sends with TTL (hop limit) 255 out of those interfaces in turn, and drops any
packet that arrived on another interface (IP_PKTINFO / IPV6_PKTINFO). It
sends nothing but mDNS: announcements (twice at start), answers to questions
about our own services (on the family the question came by), queries with
known answers while browsing (1 s, then doubling to 60 s, and again when a
record reaches 80% of its TTL), and goodbyes (TTL 0) when stopped.
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
_PKTINFO6 = struct.Struct("=16sI")
#: Linux's values; Python 3.11's socket module does not export all of them.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    #: Its IPv4 address (None: IPv6 only).
    address: str | None
    network: ipaddress.IPv4Network | None
    #: Its IPv6 addresses (no zone), and their networks.
    addresses6: tuple[str, ...] = ()
    networks6: tuple[ipaddress.IPv6Network, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address to announce (A and AAAA records)."""
        return ((self.address,) if self.address else ()) + self.addresses6

    @property
    def networks(self) -> tuple[Network, ...]:
        return ((self.network,) if self.network else ()) + self.networks6


def interfaces(
    names: Sequence[str] = (), networks: Sequence[Network] = ()
) -> list[Interface]:
    """The interfaces to use: those named, else those with an address inside
    `networks`, else every non-loopback interface that is up. Of a chosen
    interface, the addresses inside `networks` are used (all, when named)."""
    stats = psutil.net_if_stats()
    out = []
    for name, addrs in psutil.net_if_addrs().items():
        if names and name not in names:
            continue
        if not stats.get(name) or not stats[name].isup:
            continue
        v4: list[ipaddress.IPv4Interface] = []
        v6: list[ipaddress.IPv6Interface] = []
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6) or not addr.netmask:
                continue
            ip = addr.address.split("%", 1)[0]
            if addr.family == socket.AF_INET:
                iface = ipaddress.IPv4Interface(f"{ip}/{addr.netmask}")
            else:
                prefix = ipaddress.IPv6Address(addr.netmask.split("/")[0])
                bits = bin(int(prefix)).count("1")
                iface = ipaddress.IPv6Interface(f"{ip}/{bits}")
            if not names:
                if networks and not any(iface.ip in n for n in networks):
                    continue
                if not networks and iface.ip.is_loopback:
                    continue
            (v4 if iface.version == 4 else v6).append(iface)
        if not (v4 or v6):
            continue
        out.append(
            Interface(
                name,
                socket.if_nametoindex(name),
                str(v4[0].ip) if v4 else None,
                v4[0].network if v4 else None,
                tuple(str(i.ip) for i in v6),
                tuple(dict.fromkeys(i.network for i in v6)),
            )
        )
    return out


class Endpoint:
    """UDP sockets on port 5353 joined to the groups on the given interfaces."""

    def __init__(self, chosen: Sequence[Interface]):
        self.interfaces = list(chosen)
        self.by_index = {i.index: i for i in self.interfaces}
        self.sock: socket.socket | None = None
        self.sock6: socket.socket | None = None
        try:
            if any(i.address for i in self.interfaces):
                self.sock = self._open4()
            if any(i.addresses6 for i in self.interfaces):
                self.sock6 = self._open6()
        except OSError:
            self.close()
            raise

    def _open4(self) -> socket.socket:
        from gevent import socket as gsocket

        sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            _reuse(sock)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind(("", mdns.PORT))
            group = socket.inet_aton(mdns.GROUP_V4)
            for iface in self.interfaces:
                if iface.address:
                    mreqn = (
                        group
                        + socket.inet_aton(iface.address)
                        + struct.pack("=i", iface.index)
                    )
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        except OSError:
            sock.close()
            raise
        return sock

    def _open6(self) -> socket.socket:
        from gevent import socket as gsocket

        sock = gsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            _reuse(sock)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            sock.bind(("::", mdns.PORT))
            group = socket.inet_pton(socket.AF_INET6, mdns.GROUP_V6)
            for iface in self.interfaces:
                if iface.addresses6:
                    mreq = group + struct.pack("=I", iface.index)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except OSError:
            sock.close()
            raise
        return sock

    def send(
        self, data: bytes, iface: Interface | None = None, family: int | None = None
    ) -> None:
        """Multicast `data` out of one interface (default: each chosen one),
        over one address family (default: each the interface has)."""
        for target in [iface] if iface else self.interfaces:
            try:
                if self.sock and target.address and family != socket.AF_INET6:
                    mreqn = struct.pack(
                        "=4s4si",
                        b"\0" * 4,
                        socket.inet_aton(target.address),
                        target.index,
                    )
                    self.sock.setsockopt(
                        socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn
                    )
                    self.sock.sendto(data, (mdns.GROUP_V4, mdns.PORT))
                if self.sock6 and target.addresses6 and family != socket.AF_INET:
                    self.sock6.sendto(data, (mdns.GROUP_V6, mdns.PORT, 0, target.index))
            except OSError as ex:
                log.debug("mDNS send on %s failed: %s", target.name, ex)

    def reply(self, data: bytes, address: tuple) -> None:
        sock = self.sock6 if len(address) == 4 else self.sock
        try:
            if sock is not None:
                sock.sendto(data, address)
        except OSError as ex:
            log.debug("mDNS unicast reply to %s failed: %s", address, ex)

    def receive(self, timeout: float) -> tuple[bytes, tuple, Interface | None] | None:
        """One packet from a chosen interface, or None after `timeout`. An IPv6
        sender's address is a 4-tuple (host, port, flow, scope)."""
        from gevent import select

        socks = [s for s in (self.sock, self.sock6) if s is not None]
        ready, _, _ = select.select(socks, [], [], timeout)
        if not ready:
            return None
        sock = ready[0]
        try:
            data, ancillary, _, address = sock.recvmsg(
                mdns.MAX_PACKET + 1, socket.CMSG_SPACE(_PKTINFO6.size)
            )
        except BlockingIOError:
            return None
        index = None
        for level, kind, payload in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                index = _PKTINFO.unpack_from(payload)[0]
            elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                index = _PKTINFO6.unpack_from(payload)[1]
        iface = self.by_index.get(index) if index is not None else None
        if iface is None:
            return (b"", address, None)  # another interface: ignored
        return data, address, iface

    def close(self) -> None:
        for sock in (self.sock, self.sock6):
            if sock is not None:
                sock.close()


def _reuse(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


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

    def _handle(self, data: bytes, address: tuple, iface: Interface) -> None:
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
            family = socket.AF_INET6 if len(address) == 4 else socket.AF_INET
            self.endpoint.send(reply, iface, family)
