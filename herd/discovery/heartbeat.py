"""A node agent's heartbeat: its wire format, and whether the manifest admits it.

Pure functions over frozen values; the router resource (herd.router.api.heartbeat)
does the I/O and the membership (herd.discovery.membership) remembers who is
in. A heartbeat is a JSON object:

    {"name": "gpu-d", "url": "http://10.20.2.7:11434", "interval_s": 5,
     "goodbye": false, "version": "0.12.3",
     "inventory": "9f2c...", "models": [...Ollama /api/tags entries...],
     "loaded": [...ps entries...],
     "metrics": {"cpu_percent": 7.5, "memory": {"total": ..., "available": ...},
                 "swap": {...}, "disk": {...}, "gpus": [...], ...}}

Every field is checked here, so a malformed heartbeat is a 400 naming the
field, never an exception deeper in the router.

`inventory` is the agent's digest of version, models and loaded models. Once
the router has taken an inventory, the agent leaves those fields out until
they change (a beat is then a third of the size, and cheaper to check); a
router that does not hold that inventory answers `"resend": true` and the
agent sends everything again.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from herd.discovery.frozen import build
from herd.errors import InvalidRequest
from herd.hosts import netloc
from herd.manifest.model import Fleet

MAX_BODY = 256 * 1024
MAX_MODELS = 1000
NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})\Z")
NONCE = re.compile(r"^[0-9a-f]{16,64}\Z")
INVENTORY = NONCE
#: The reason given to an admitted heartbeat from a discovered node.
ADMITTED = "signed heartbeat from an admitted network"


@dataclass(frozen=True)
class Heartbeat:
    name: str
    url: str
    #: The node's address, from the URL (an IP literal: nothing resolves names).
    host: ipaddress.IPv4Address | ipaddress.IPv6Address
    interval_s: float = 5.0
    goodbye: bool = False
    version: str | None = None
    #: Why the agent could not reach its local Ollama (None: it answered).
    ollama_error: str | None = None
    models: tuple[Mapping[str, Any], ...] = ()
    loaded: tuple[Mapping[str, Any], ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Digest of (version, ollama_error, models, loaded), as the agent computed it.
    inventory: str | None = None
    #: The agent left those out: unchanged since the router last took them
    #: (Membership.beat takes them from the member that holds them).
    partial: bool = False


@dataclass(frozen=True)
class Verdict:
    """Admitted (with the static node it belongs to, if any) or refused, and why."""

    admitted: bool
    reason: str
    status: int = 200
    static_name: str | None = None


#: What `admit` answers nearly every beat (a frozen value: one for all).
_ADMITTED = Verdict(True, ADMITTED)


def _entries(doc: dict[str, Any], key: str) -> tuple[Mapping[str, Any], ...]:
    if key not in doc:
        return ()  # (a light heartbeat leaves both out)
    value = doc[key]
    if not isinstance(value, list) or len(value) > MAX_MODELS:
        raise InvalidRequest(f"{key} must be a list of at most {MAX_MODELS} objects")
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(
            entry.get("name", entry.get("model")), str
        ):
            raise InvalidRequest(f"{key}[{i}] must be an object with a name")
    return tuple(value)


def parse(doc: Any) -> Heartbeat:
    """A `Heartbeat` from a decoded JSON body, or InvalidRequest naming the field."""
    if not isinstance(doc, dict):
        raise InvalidRequest("heartbeat must be a JSON object")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidRequest(
            "name must be 1-63 lowercase letters, digits, '.', '_' or '-'"
        )
    url = doc.get("url")
    if not isinstance(url, str) or len(url) > 200:
        raise InvalidRequest("url must be the node's Ollama URL, http://IP:PORT")
    host = _url_host(url)
    interval = doc.get("interval_s", 5.0)
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise InvalidRequest("interval_s must be a number")
    if not 0.1 <= interval <= 600:
        raise InvalidRequest("interval_s must be between 0.1 and 600")
    goodbye = doc.get("goodbye", False)
    if not isinstance(goodbye, bool):
        raise InvalidRequest("goodbye must be true or false")
    version = doc.get("version")
    if version is not None and (not isinstance(version, str) or len(version) > 64):
        raise InvalidRequest("version must be a short string")
    ollama_error = doc.get("ollama_error")
    if ollama_error is not None and not isinstance(ollama_error, str):
        raise InvalidRequest("ollama_error must be a string")
    metrics = doc.get("metrics", {})
    if not isinstance(metrics, dict):
        raise InvalidRequest("metrics must be an object")
    inventory = doc.get("inventory")
    if inventory is not None and (
        not isinstance(inventory, str) or not INVENTORY.match(inventory)
    ):
        raise InvalidRequest("inventory must be 16-64 lowercase hex digits")
    partial = not goodbye and inventory is not None and "models" not in doc
    return build(
        Heartbeat,
        name=name,
        url=url.rstrip("/"),
        host=host,
        interval_s=float(interval),
        goodbye=goodbye,
        version=version,
        ollama_error=ollama_error[:200] if ollama_error else None,
        models=_entries(doc, "models"),
        loaded=_entries(doc, "loaded"),
        metrics=MappingProxyType(metrics),
        inventory=inventory,
        partial=partial,
    )


@functools.lru_cache(maxsize=4096)
def _url_host(url: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP of an agent's URL (cached: each agent repeats its URL every beat;
    a refused URL raises, and exceptions are not cached)."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = ipaddress.ip_address(parts.hostname or "")
    except ValueError as ex:
        raise InvalidRequest(
            "url must be http://IP:PORT with an IP address (no names, no path)"
        ) from ex
    if parts.scheme != "http" or port is None or parts.path.strip("/"):
        raise InvalidRequest("url must be http://IP:PORT (no path, port required)")
    if parts.query or parts.fragment or parts.username:
        raise InvalidRequest("url must be http://IP:PORT (no query or credentials)")
    # The URL is kept, logged and compared as sent, so it must be the one that
    # was parsed: urlsplit drops tabs and line breaks anywhere in it, and other
    # spellings of one address (a zero-padded port, an IPv6 written another
    # way) would let two names hold one node.
    written = f"http://{netloc(host, port)}"
    if url.rstrip("/") != written:
        raise InvalidRequest(f"url must be written {written}")
    return host


def check_source(fleet: Fleet, address: str | None) -> Verdict | None:
    """Refuse a sender outside `discovery.mdns.networks` (before any crypto)."""
    networks = fleet.discovery.mdns_networks
    known = _memo(networks)
    verdict = known.get(address, _UNSEEN)
    if verdict is _UNSEEN:
        verdict = known[address] = _check_source(networks, address)
    return verdict


def _check_source(networks: tuple, address: str | None) -> Verdict | None:
    if not networks:
        return Verdict(False, "discovery.mdns.networks is empty", 403)
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return Verdict(False, f"source address {address!r} is not an IP", 403)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if not any(ip in net for net in networks):
        return Verdict(False, f"source {ip} is outside discovery.mdns.networks", 403)
    return None


def _in_networks(networks: tuple, hb: Heartbeat) -> bool:
    """Whether the host of `hb`'s URL is in one of `networks` (remembered per
    tuple, by URL: an address object hashes in pure Python)."""
    known = _memo(networks)
    inside = known.get(hb.url)
    if inside is None:
        inside = known[hb.url] = any(hb.host in net for net in networks)
    return inside


_UNSEEN = object()
_MEMO: dict[int, tuple[tuple, dict]] = {}
_MEMO_KEYS = 4096


def _memo(networks: tuple) -> dict:
    """Answers remembered for one tuple of networks (a manifest's), by the
    tuple's identity: hashing the networks themselves (pure-Python
    `ipaddress`) would cost more than most answers. A reload brings new
    tuples, so nothing outlives the manifest it was computed for."""
    entry = _MEMO.get(id(networks))
    if entry is None or entry[0] is not networks or len(entry[1]) > _MEMO_KEYS:
        if len(_MEMO) > 16:
            _MEMO.clear()
        entry = _MEMO[id(networks)] = (networks, {})
    return entry[1]


def admit(
    fleet: Fleet,
    hb: Heartbeat,
    address: str,
    holder: Callable[[str], tuple[str, str] | None],
    url_holder: Callable[[str], str | None],
) -> Verdict:
    """Whether the manifest admits `hb` sent from `address` (whose network the
    caller checked first with `check_source`, before any cryptography).

    `holder(name)` gives the (address, url) of the live discovered node of
    that name, `url_holder(url)` the name of the one at that URL. A static
    node's name may be used only by an agent reporting that node's URL (its
    metrics are then merged into the static node); an admitted node's name
    only from the address that holds it, and its URL only under its name.
    """
    networks = fleet.router.node_networks
    if networks and not _in_networks(networks, hb):
        return Verdict(False, f"url {hb.url} is outside router.node_networks", 403)
    static = fleet.node_at(hb.url)
    if static is not None:
        # The agent of a static node (under any name): merge its metrics.
        return Verdict(
            True, f"agent of static node {static.name}", static_name=static.name
        )
    claimed = fleet.node(hb.name)
    if claimed is not None:
        return Verdict(
            False, f"name {hb.name} belongs to static node at {claimed.url}", 409
        )
    held = holder(hb.name)
    if held is not None and held[0] != address:
        return Verdict(False, f"name {hb.name} is held by the node at {held[0]}", 409)
    other = url_holder(hb.url)
    if other is not None and other != hb.name:
        return Verdict(False, f"url {hb.url} is held by node {other}", 409)
    return _ADMITTED
