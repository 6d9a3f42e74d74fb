"""Checks JSON Schema cannot express: names that must match, networks that parse.

`check(doc, resolve)` runs on a schema-valid document and returns every problem
as `(field path, message)`; the loader adds line numbers. Pure: no I/O (host
names in node URLs are looked up through `resolve`, which the loader backs with
herd.hosts: /etc/hosts only, never DNS).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from herd.hosts import literal, unresolvable
from herd.manifest import hachecks
from herd.manifest.model import normalize_model_name

FieldPath = tuple[str | int, ...]
Finding = tuple[FieldPath, str]
#: Host name -> the address herd would connect to, or None (see herd.hosts).
Resolve = Callable[[str], str | None]


def check(doc: dict[str, Any], resolve: Resolve = literal) -> list[Finding]:
    """Every semantic problem in a schema-valid manifest, in document order."""
    findings: list[Finding] = []
    findings.extend(_listen(doc))
    findings.extend(_networks(doc))
    findings.extend(_nodes(doc, resolve))
    findings.extend(_models(doc))
    findings.extend(_clients(doc))
    findings.extend(hachecks.check(doc))
    return findings


def _listen(doc: dict[str, Any]) -> Iterator[Finding]:
    listen = (doc.get("router") or {}).get("listen")
    if listen is None:
        return
    host, _, port = listen.rpartition(":")
    if not 1 <= int(port) <= 65535:
        yield ("router", "listen"), f"port {port} is out of range 1-65535"
    if host.startswith("["):
        yield from _ip(("router", "listen"), host[1:-1], "listen address")


def _ip(path: FieldPath, text: str, what: str) -> Iterator[Finding]:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        yield path, f"{text!r} is not a valid {what}"


def parse_cidr(
    text: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | None, str]:
    """(network, "") or (None, why not); host bits set is an error with a hint."""
    try:
        return ipaddress.ip_network(text, strict=True), ""
    except ValueError as ex:
        try:
            meant = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return None, f"{text!r} is not a valid CIDR network ({ex})"
        return None, f"{text!r} has host bits set; did you mean {meant}?"


def _cidr_lists(doc: dict[str, Any]) -> Iterator[tuple[FieldPath, list[str]]]:
    router = doc.get("router") or {}
    yield ("router", "node_networks"), router.get("node_networks") or []
    for i, client in enumerate(router.get("clients") or []):
        yield ("router", "clients", i, "networks"), client.get("networks") or []
    mdns = (doc.get("discovery") or {}).get("mdns") or {}
    yield ("discovery", "mdns", "networks"), mdns.get("networks") or []


def _networks(doc: dict[str, Any]) -> Iterator[Finding]:
    for path, values in _cidr_lists(doc):
        for j, text in enumerate(values):
            net, why = parse_cidr(text)
            if net is None:
                yield (*path, j), why


def _node_networks(doc: dict[str, Any]) -> list[Any]:
    nets = []
    for text in (doc.get("router") or {}).get("node_networks") or []:
        net, _ = parse_cidr(text)
        if net is not None:
            nets.append(net)
    return nets


def _nodes(doc: dict[str, Any], resolve: Resolve) -> Iterator[Finding]:
    nodes = doc.get("nodes") or []
    allowed = _node_networks(doc)
    names = Counter(n["name"] for n in nodes)
    urls = Counter(n["url"].rstrip("/").lower() for n in nodes)
    for i, node in enumerate(nodes):
        if names[node["name"]] > 1:
            yield ("nodes", i, "name"), f"duplicate node name {node['name']!r}"
        if urls[node["url"].rstrip("/").lower()] > 1:
            yield ("nodes", i, "url"), f"another node already has URL {node['url']!r}"
        yield from _node_url(("nodes", i, "url"), node["url"], allowed, resolve)
    mdns = (doc.get("discovery") or {}).get("mdns") or {}
    # Agents can join by heartbeat whenever a fleet key is set (mDNS or not).
    joinable = mdns.get("enabled") or (doc.get("discovery") or {}).get("node_keys")
    if not nodes and not joinable:
        yield (
            ("nodes",),
            "no nodes declared and mDNS discovery is off: nothing can serve",
        )
    if joinable and not mdns.get("networks"):
        yield (
            ("discovery", "mdns", "networks"),
            ("node discovery needs at least one network to admit nodes from"),
        )


def _node_url(
    path: FieldPath, url: str, allowed: list[Any], resolve: Resolve
) -> Iterator[Finding]:
    parsed = urllib.parse.urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        yield path, f"{url!r} has an invalid port"
        return
    if port is not None and not 1 <= port <= 65535:
        yield path, f"{url!r}: port {port} is out of range 1-65535"
    host = parsed.hostname or ""
    if literal(host) is None and url.split("//", 1)[1].startswith("["):
        yield path, f"{host!r} is not a valid IPv6 address"
        return
    # A name is used only if /etc/hosts lists it; its address is then checked.
    found = resolve(host)
    if found is None:
        yield path, unresolvable(host)
        return
    address = ipaddress.ip_address(found)
    if allowed and not any(address in net for net in allowed):
        shown = host if found == host else f"{host} ({found})"
        yield (
            path,
            (
                f"{shown} is outside every network in router.node_networks "
                f"({', '.join(map(str, allowed))})"
            ),
        )


def _models(doc: dict[str, Any]) -> Iterator[Finding]:
    models = doc.get("models") or []
    nodes = doc.get("nodes") or []
    node_names = {n["name"] for n in nodes}
    discovery = doc.get("discovery") or {}
    mdns = discovery.get("mdns") or {}
    # Discovered nodes may join: replicas cannot be judged, and their labels
    # are what mdns.defaults (merged with each per-name override) give them.
    mdns_on = bool(mdns.get("enabled")) or bool(discovery.get("node_keys"))
    if mdns_on:
        base = (mdns.get("defaults") or {}).get("labels") or {}
        nodes = nodes + [{"name": "", "labels": base}]
        nodes += [
            {"name": "", "labels": {**base, **(o.get("labels") or {})}}
            for o in (mdns.get("nodes") or {}).values()
            if isinstance(o, dict)
        ]
    owner: dict[str, int] = {}
    for i, model in enumerate(models):
        canonical = normalize_model_name(model["name"])
        if canonical in owner:
            yield (
                ("models", i, "name"),
                (
                    f"model {model['name']!r} is declared twice "
                    f"(also models[{owner[canonical]}])"
                ),
            )
        owner.setdefault(canonical, i)
    for i, model in enumerate(models):
        for j, alias in enumerate(model.get("aliases") or []):
            key = alias.lower()
            clash = owner.get(key, owner.get(normalize_model_name(alias)))
            if clash is not None and clash != i:
                yield (
                    ("models", i, "aliases", j),
                    (
                        f"alias {alias!r} is already the name or an alias "
                        f"of models[{clash}]"
                    ),
                )
            owner.setdefault(key, i)
    declared = {normalize_model_name(m["name"]) for m in models}
    for i, model in enumerate(models):
        name = normalize_model_name(model["name"])
        for j, fallback in enumerate(model.get("fallbacks") or []):
            target = normalize_model_name(fallback)
            if target == name:
                yield (
                    ("models", i, "fallbacks", j),
                    "a model cannot fall back to itself",
                )
            elif target not in declared:
                yield (
                    ("models", i, "fallbacks", j),
                    (f"fallback {fallback!r} is not a declared model"),
                )
        yield from _placement(
            ("models", i, "place"), model["place"], nodes, node_names, mdns_on
        )


def _placement(
    path: FieldPath,
    place: dict[str, Any],
    nodes: list[dict[str, Any]],
    node_names: set[str],
    mdns_on: bool,
) -> Iterator[Finding]:
    if "nodes" in place and "labels" in place:
        yield path, "give either place.nodes or place.labels, not both"
        return
    if "nodes" in place:
        for j, name in enumerate(place["nodes"]):
            if name not in node_names:
                yield (*path, "nodes", j), f"no node named {name!r} is declared"
        matching = len(set(place["nodes"]) & node_names)
    elif "labels" in place:
        selector = place["labels"]
        matching = sum(
            all((n.get("labels") or {}).get(k) == v for k, v in selector.items())
            for n in nodes
        )
        if matching == 0:
            wanted = ", ".join(f"{k}={v}" for k, v in selector.items())
            yield (*path, "labels"), f"no declared node has labels {wanted}"
    else:
        yield path, "place needs nodes or labels: the model is placed on no node"
        return
    replicas = place.get("replicas")
    if replicas is not None and matching and replicas > matching and not mdns_on:
        yield (
            (*path, "replicas"),
            (f"{replicas} replicas wanted but only {matching} node(s) match"),
        )


def _clients(doc: dict[str, Any]) -> Iterator[Finding]:
    clients = (doc.get("router") or {}).get("clients") or []
    names = Counter(c["name"] for c in clients)
    known = set()
    for model in doc.get("models") or []:
        known.add(normalize_model_name(model["name"]))
        for alias in model.get("aliases") or []:
            known.update((alias.lower(), normalize_model_name(alias)))
    for i, client in enumerate(clients):
        if names[client["name"]] > 1:
            yield (
                ("router", "clients", i, "name"),
                (f"duplicate client group name {client['name']!r}"),
            )
        for j, model in enumerate(client.get("models") or []):
            if model.lower() not in known and normalize_model_name(model) not in known:
                yield (
                    ("router", "clients", i, "models", j),
                    (f"{model!r} is not a declared model or alias"),
                )
        yield from _operator(i, client)


def _operator(i: int, client: dict[str, Any]) -> Iterator[Finding]:
    """An operator group sees node addresses: not for every address without a
    token (that would show the fleet's internals to anyone on the network)."""
    if not client.get("operator") or client.get("token_sha256"):
        return
    for j, text in enumerate(client.get("networks") or []):
        net, _ = parse_cidr(text)
        if net is not None and net.prefixlen == 0:
            yield (
                ("router", "clients", i, "networks", j),
                (
                    f"{net} admits every address to an operator group without a "
                    "token: narrow the networks or set token_sha256"
                ),
            )
