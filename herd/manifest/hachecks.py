"""Semantic checks of `router.ha` (the keepalived pair) that JSON Schema cannot do.

Pure: runs on a schema-valid document and yields `(field path, message)`
findings like herd.manifest.semantics, which calls it. The secret file is not
read here (validation must not need the secret); `herd apply` reads it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

FieldPath = tuple[str | int, ...]
Finding = tuple[FieldPath, str]
HA = ("router", "ha")
#: Each router after the first gets this much less priority.
PRIORITY_STEP = 10
WILDCARDS = ("0.0.0.0", "[::]", "*", "")
IPV6_REFUSED = (
    "{} is an IPv6 address: router.ha moves an IPv4 address only (keepalived "
    "VRRP v2 with PASS authentication, which IPv6 does not carry); use IPv4 "
    "for router.ha.virtual_address and router.ha.peers"
)


def _address(
    path: FieldPath, text: str
) -> Iterator[Finding | ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        yield path, f"{text!r} is not an IPv4 address (router.ha is IPv4: VRRP v2)"
        return
    if address.version == 6:
        yield path, IPV6_REFUSED.format(text)
        return
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        yield path, f"{text} cannot be a router's or the virtual address"
        return
    yield address


def _networks(doc: dict[str, Any]) -> list[Any]:
    nets = []
    for client in (doc.get("router") or {}).get("clients") or []:
        for text in client.get("networks") or []:
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                continue  # reported by herd.manifest.semantics
    return nets


def check(doc: dict[str, Any]) -> Iterator[Finding]:
    """Every problem of `router.ha` (nothing when it is absent)."""
    router = doc.get("router") or {}
    ha = router.get("ha")
    if not ha:
        return
    found = list(_address((*HA, "virtual_address"), ha["virtual_address"]))
    vip = found[-1] if isinstance(found[-1], ipaddress.IPv4Address) else None
    yield from (f for f in found if not isinstance(f, ipaddress.IPv4Address))
    peers = []
    for i, text in enumerate(ha["peers"]):
        for item in _address((*HA, "peers", i), text):
            if isinstance(item, ipaddress.IPv4Address):
                peers.append(item)
            else:
                yield item
        if vip is not None and text == str(vip):
            yield (
                (*HA, "peers", i),
                (
                    f"{text} is the virtual address; peers are the routers' own "
                    "addresses"
                ),
            )
    nets = [n for n in _networks(doc) if n.version == 4]
    if vip is not None and not any(vip in n for n in nets):
        yield (
            (*HA, "virtual_address"),
            (
                f"{vip} is outside every client network (router.clients[].networks): "
                "no client could reach the routers through it"
            ),
        )
    last = ha.get("priority", 150) - PRIORITY_STEP * (len(ha["peers"]) - 1)
    if last < 1:
        yield (
            (*HA, "priority"),
            (
                f"{ha.get('priority', 150)} is too low for {len(ha['peers'])} "
                f"routers: each next peer gets {PRIORITY_STEP} less, and the last "
                f"would get {last}"
            ),
        )
    host = str(router.get("listen", "0.0.0.0:11435")).rpartition(":")[0]
    if host not in WILDCARDS:
        yield (
            ("router", "listen"),
            (
                "router.ha needs the router to listen on every address "
                f"(0.0.0.0:PORT): bound to {host} it cannot answer on the virtual "
                "address when it moves here"
            ),
        )
