"""Records heard over mDNS, kept for their TTLs and resolved into services.

A browser feeds every response into `Cache.add`; `services(kind)` then gives
each live instance (PTR → SRV → A/TXT), `known_answers(kind)` what to list in
the next query (known-answer suppression), and `refresh_due(kind)` says when a
record has used 80% of its TTL and should be asked for again.
"""

from __future__ import annotations

from types import MappingProxyType

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset

from herd.discovery.mdns import GOODBYE_GRACE_S, Found


class Cache:
    """Records heard on the network, each until its TTL runs out."""

    def __init__(self) -> None:
        #: (name, rdtype) -> {rdata text: (rdata, ttl, expires)}
        self._records: dict[tuple[dns.name.Name, int], dict[str, tuple]] = {}

    def add(self, message: dns.message.Message, now: float) -> None:
        """Remember the records of a response (TTL 0: gone in one second)."""
        if not message.flags & dns.flags.QR:
            return
        for rrset in list(message.answer) + list(message.additional):
            if rrset.rdtype not in (
                dns.rdatatype.PTR,
                dns.rdatatype.SRV,
                dns.rdatatype.TXT,
                dns.rdatatype.A,
                dns.rdatatype.AAAA,
            ):
                continue
            slot = self._records.setdefault((rrset.name, rrset.rdtype), {})
            if rrset.ttl and rrset.rdtype != dns.rdatatype.PTR:
                # Unique records are sent with cache-flush: older ones go.
                fresh = {rd.to_text() for rd in rrset}
                for text, (rd, ttl, expires) in list(slot.items()):
                    if text not in fresh:
                        slot[text] = (rd, ttl, min(expires, now + GOODBYE_GRACE_S))
            for rd in rrset:
                if rrset.ttl == 0:
                    if rd.to_text() in slot:
                        old = slot[rd.to_text()]
                        slot[rd.to_text()] = (rd, 0, min(old[2], now + GOODBYE_GRACE_S))
                    continue
                slot[rd.to_text()] = (rd, rrset.ttl, now + rrset.ttl)

    def expire(self, now: float) -> None:
        for key in list(self._records):
            slot = self._records[key]
            for text in [t for t, v in slot.items() if v[2] <= now]:
                del slot[text]
            if not slot:
                del self._records[key]

    def _live(self, name: dns.name.Name, rdtype: int, now: float) -> list[tuple]:
        slot = self._records.get((name, rdtype), {})
        return [v for v in slot.values() if v[2] > now]

    def known_answers(self, kind: str, now: float) -> list[dns.rrset.RRset]:
        """PTR records for `kind` we hold with more than half their TTL left."""
        name = dns.name.from_text(kind)
        out = []
        for rd, ttl, expires in self._live(name, dns.rdatatype.PTR, now):
            remaining = int(expires - now)
            if ttl and remaining > ttl / 2:
                out.append(dns.rrset.from_rdata(name, remaining, rd))
        return out

    def refresh_due(self, kind: str, now: float) -> bool:
        """Some PTR for `kind` has passed 80% of its TTL (time to ask again)."""
        name = dns.name.from_text(kind)
        return any(
            ttl and expires - now < ttl * 0.2
            for _, ttl, expires in self._live(name, dns.rdatatype.PTR, now)
        )

    def services(self, kind: str, now: float) -> list[Found]:
        """Every live instance of `kind` whose SRV (and so port) we know."""
        out = []
        kind_name = dns.name.from_text(kind)
        for ptr, _, expires in self._live(kind_name, dns.rdatatype.PTR, now):
            target = ptr.target
            srvs = self._live(target, dns.rdatatype.SRV, now)
            if not srvs:
                continue
            srv = srvs[0][0]
            txt: dict[str, str] = {}
            for rd, _, _ in self._live(target, dns.rdatatype.TXT, now):
                for raw in rd.strings:
                    key, _, value = raw.decode("utf-8", "replace").partition("=")
                    if key:
                        txt.setdefault(key.lower(), value)
            # IPv4 first (sorted), then IPv6: a URL is built from the first.
            addresses = tuple(
                sorted(
                    (
                        rd.address
                        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
                        for rd, _, _ in self._live(srv.target, rdtype, now)
                    ),
                    key=lambda a: (":" in a, a),
                )
            )
            out.append(
                Found(
                    kind=kind,
                    instance=target.labels[0].decode("utf-8", "replace"),
                    host=srv.target.to_text(),
                    port=srv.port,
                    txt=MappingProxyType(txt),
                    addresses=addresses,
                    expires=expires,
                )
            )
        return sorted(out, key=lambda f: f.instance)
