"""DNS-SD over multicast DNS, as messages: build and read them with dnspython.

Pure functions, no sockets (the sockets are in herd.discovery.mdnsnet):

- `announcement(services)` / `announcement(services, goodbye=True)`: an
  unsolicited response with PTR, SRV, TXT and A/AAAA records (TTL 0 says
  goodbye);
- `query(kind, cache)`: a PTR question carrying the answers we already hold
  (known-answer suppression, RFC 6762 section 7.1);
- `answer(message, services, ...)`: our reply to someone's question, leaving
  out records the asker already has with at least half their TTL left;
(`herd.discovery.mdnscache.Cache` keeps what was heard, by TTL.)

mDNS sets the top bit of a record's class (cache flush) and of a question's
class (unicast response wanted), and compresses names inside SRV and NSEC
data; dnspython, following unicast DNS, accepts neither, so `parse()` rewrites
the wire bytes (bits cleared, names expanded) before dnspython reads them, and
records are written with the bit set through `RRset.deleting` (dnspython's
class override for rendering).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.renderer
import dns.rrset

if TYPE_CHECKING:
    from herd.discovery.mdnscache import Cache

GROUP_V4 = "224.0.0.251"
GROUP_V6 = "ff02::fb"
PORT = 5353
ROUTER_TYPE = "_herd._tcp.local."
NODE_TYPE = "_herd-node._tcp.local."
META_QUERY = "_services._dns-sd._udp.local."
#: RFC 6762 section 10: host records 120 s, the others 75 minutes.
HOST_TTL = 120
SERVICE_TTL = 4500
LEGACY_TTL = 10
CLASS_TOP_BIT = 0x8000
CACHE_FLUSH_IN = CLASS_TOP_BIT | dns.rdataclass.IN
#: A goodbye (TTL 0) record is kept one more second (RFC 6762 section 10.1).
GOODBYE_GRACE_S = 1.0
MAX_PACKET = 9000


class BadPacket(ValueError):
    """Not a DNS message we can read."""


@dataclass(frozen=True)
class Service:
    """One service instance we announce."""

    kind: str
    instance: str
    host: str
    port: int
    txt: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    addresses: tuple[str, ...] = ()

    @property
    def name(self) -> dns.name.Name:
        return dns.name.Name((self.instance.encode()[:63],)).concatenate(
            dns.name.from_text(self.kind)
        )


@dataclass(frozen=True)
class Found:
    """A service instance resolved from records heard on the network."""

    kind: str
    instance: str
    host: str
    port: int
    txt: Mapping[str, str]
    addresses: tuple[str, ...]
    #: When the PTR record that listed it expires (cache clock).
    expires: float


# -- wire helpers --------------------------------------------------------------


def _read_name(wire: bytes, pos: int) -> tuple[bytes, int]:
    """A (possibly compressed) name at `pos`, expanded; and the offset after it."""
    out = bytearray()
    end = None
    jumps = 0
    while True:
        if pos >= len(wire):
            raise BadPacket("name runs past the end")
        length = wire[pos]
        if length == 0:
            out.append(0)
            return bytes(out), (end if end is not None else pos + 1)
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(wire):
                raise BadPacket("truncated compression pointer")
            jumps += 1
            if jumps > 64:
                raise BadPacket("compression loop")
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | wire[pos + 1]
            continue
        if length & 0xC0:
            raise BadPacket("bad label type")
        out += wire[pos : pos + 1 + length]
        if len(out) > 255:
            raise BadPacket("name too long")
        pos += 1 + length


#: Record types whose data starts with (after a fixed prefix) a name that mDNS
#: may compress but dnspython, following unicast DNS, will not decompress.
_NAME_IN_RDATA = {dns.rdatatype.SRV: 6, dns.rdatatype.NSEC: 0}


def normalize(wire: bytes) -> tuple[bytes, bool]:
    """The message rewritten for dnspython: mDNS class bits cleared and every
    name expanded (no compression pointers); and whether any question asked
    for a unicast reply (QU)."""
    if len(wire) < 12:
        raise BadPacket("shorter than a DNS header")
    counts = struct.unpack_from("!HHHH", wire, 4)
    out = bytearray(wire[:12])
    pos, unicast = 12, False
    for _ in range(counts[0]):
        name, pos = _read_name(wire, pos)
        if pos + 4 > len(wire):
            raise BadPacket("truncated question")
        qtype, qclass = struct.unpack_from("!HH", wire, pos)
        unicast = unicast or bool(qclass & CLASS_TOP_BIT)
        out += name + struct.pack("!HH", qtype, qclass & ~CLASS_TOP_BIT)
        pos += 4
    for _ in range(sum(counts[1:])):
        name, pos = _read_name(wire, pos)
        if pos + 10 > len(wire):
            raise BadPacket("truncated record")
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", wire, pos)
        pos += 10
        if pos + rdlen > len(wire):
            raise BadPacket("truncated record data")
        rdata = wire[pos : pos + rdlen]
        if rtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME):
            rdata = _read_name(wire, pos)[0]
        elif rtype in _NAME_IN_RDATA:
            skip = _NAME_IN_RDATA[rtype]
            target, after = _read_name(wire, pos + skip)
            rdata = wire[pos : pos + skip] + target + wire[after : pos + rdlen]
        if rtype != dns.rdatatype.OPT:
            rclass &= ~CLASS_TOP_BIT
        out += name + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata
        pos += rdlen
    return bytes(out), unicast


def parse(wire: bytes) -> tuple[dns.message.Message, bool]:
    """A received packet as a dnspython message, and its QU flag."""
    if len(wire) > MAX_PACKET:
        raise BadPacket("oversized packet")
    clean, unicast = normalize(wire)
    try:
        message = dns.message.from_wire(clean, ignore_trailing=True)
    except Exception as ex:  # noqa: BLE001 - dnspython raises many kinds
        raise BadPacket(str(ex) or type(ex).__name__) from ex
    return message, unicast


# -- records -----------------------------------------------------------------


def _txt_strings(txt: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(txt.items())] or [""]


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def records(
    service: Service, ttl_scale: float = 1.0, *, cap: int | None = None
) -> dict[str, list[dns.rrset.RRset]]:
    """The PTR, SRV, TXT and A/AAAA record sets of a service (TTLs scaled: 0 =
    goodbye)."""

    def ttl(base: int) -> int:
        value = int(base * ttl_scale)
        return min(value, cap) if cap is not None else value

    name = service.name
    ptr = dns.rrset.from_text(
        service.kind, ttl(SERVICE_TTL), "IN", "PTR", name.to_text()
    )
    srv = dns.rrset.from_text(
        name, ttl(HOST_TTL), "IN", "SRV", f"0 0 {service.port} {service.host}"
    )
    txt = dns.rrset.from_text(
        name,
        ttl(SERVICE_TTL),
        "IN",
        "TXT",
        " ".join(_quoted(s) for s in _txt_strings(service.txt)),
    )
    hosts = []
    for rdtype, addresses in (
        ("A", [a for a in service.addresses if ":" not in a]),
        ("AAAA", [a for a in service.addresses if ":" in a]),
    ):
        if addresses:
            hosts.append(
                dns.rrset.from_text(
                    service.host, ttl(HOST_TTL), "IN", rdtype, *addresses
                )
            )
    return {"ptr": [ptr], "srv": [srv], "txt": [txt], "a": hosts}


def render(
    answers: Iterable[dns.rrset.RRset],
    additional: Iterable[dns.rrset.RRset] = (),
    *,
    msg_id: int = 0,
    questions: Iterable[dns.rrset.RRset] = (),
    flush: bool = True,
) -> bytes:
    """A response packet; unique records (not PTR) carry the cache-flush bit."""
    renderer = dns.renderer.Renderer(
        id=msg_id, flags=dns.flags.QR | dns.flags.AA, max_size=MAX_PACKET
    )
    for question in questions:
        renderer.add_question(question.name, question.rdtype, question.rdclass)
    for section, rrsets in ((dns.renderer.ANSWER, answers), (2, additional)):
        for rrset in rrsets:
            copy = rrset.copy()
            if flush and rrset.rdtype != dns.rdatatype.PTR:
                copy.deleting = CACHE_FLUSH_IN  # class override, see module doc
            renderer.add_rrset(
                dns.renderer.ADDITIONAL if section == 2 else section, copy
            )
    renderer.write_header()
    return renderer.get_wire()


def announcement(services: Iterable[Service], goodbye: bool = False) -> bytes:
    """Unsolicited response announcing (or, TTL 0, withdrawing) `services`."""
    answers: list[dns.rrset.RRset] = []
    for service in services:
        for group in records(service, 0.0 if goodbye else 1.0).values():
            answers += group
    return render(answers)


def query(kind: str, cache: Cache | None = None, now: float = 0.0) -> bytes:
    """A multicast PTR question for `kind` with our known answers attached."""
    message = dns.message.Message(id=0)
    message.flags = dns.flags.Flag(0)
    message.find_rrset(
        message.question,
        dns.name.from_text(kind),
        dns.rdataclass.IN,
        dns.rdatatype.PTR,
        create=True,
    )
    if cache is not None:
        for rrset in cache.known_answers(kind, now):
            message.answer.append(rrset)
    return message.to_wire(max_size=MAX_PACKET)


def answer(
    message: dns.message.Message,
    services: Iterable[Service],
    *,
    legacy: bool = False,
) -> bytes | None:
    """Our response to a query (None when we have nothing new to say).

    Known-answer suppression: a record the asker listed with at least half
    our TTL remaining is not repeated. A legacy (non-5353 source) query gets a
    unicast reply with its id, its questions, TTLs capped at 10 s and no
    cache-flush bits (RFC 6762 section 6.7).
    """
    if message.flags & dns.flags.QR or not message.question:
        return None
    services = list(services)
    known = {
        (rrset.name, rrset.rdtype, rd.to_text()): rrset.ttl
        for rrset in message.answer
        for rd in rrset
    }
    answers: list[dns.rrset.RRset] = []
    additional: list[dns.rrset.RRset] = []
    cap = LEGACY_TTL if legacy else None
    meta = dns.name.from_text(META_QUERY)
    for question in message.question:
        qtype, qname = question.rdtype, question.name
        for service in services:
            sets = records(service, cap=cap)
            kind = dns.name.from_text(service.kind)
            if qname == meta and qtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
                answers.append(
                    dns.rrset.from_text(
                        meta, cap or SERVICE_TTL, "IN", "PTR", service.kind
                    )
                )
            elif qname == kind and qtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
                answers += sets["ptr"]
                additional += sets["srv"] + sets["txt"] + sets["a"]
            elif qname == service.name:
                for key, rdtype in (("srv", "SRV"), ("txt", "TXT")):
                    if qtype in (dns.rdatatype.from_text(rdtype), dns.rdatatype.ANY):
                        answers += sets[key]
                if qtype in (dns.rdatatype.SRV, dns.rdatatype.ANY):
                    additional += sets["a"]
            elif qname == dns.name.from_text(service.host) and qtype in _HOST_TYPES:
                answers += [
                    r for r in sets["a"] if qtype in (r.rdtype, dns.rdatatype.ANY)
                ]
    answers = _suppress(answers, known)
    if not answers:
        return None
    additional = [r for r in _suppress(additional, known) if r not in answers]
    return render(
        answers,
        additional,
        msg_id=message.id if legacy else 0,
        questions=message.question if legacy else (),
        flush=not legacy,
    )


_HOST_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.ANY)


def _suppress(
    rrsets: list[dns.rrset.RRset], known: Mapping[tuple, int]
) -> list[dns.rrset.RRset]:
    out: list[dns.rrset.RRset] = []
    for rrset in rrsets:
        keep = [
            rd
            for rd in rrset
            if known.get((rrset.name, rrset.rdtype, rd.to_text()), -1) < rrset.ttl / 2
        ]
        if not keep:
            continue
        trimmed = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, keep)
        if not any(_same(trimmed, r) for r in out):
            out.append(trimmed)
    return out


def _same(a: dns.rrset.RRset, b: dns.rrset.RRset) -> bool:
    return a.name == b.name and a.rdtype == b.rdtype and set(a) == set(b)
