"""Host names without DNS: herd reads /etc/hosts itself and never asks a resolver.

herd promises no DNS and no lookups outside the site. The system resolver
(`getaddrinfo`, `getfqdn`) may fall through from /etc/hosts to DNS, so herd
never hands it a name: a host in a node URL, a `--bind` or a `--router`
address must be an IP literal or a name listed in /etc/hosts. herd parses the
file itself (again only when it changes) and connects to the address it names.
Names found nowhere are refused with the reason, at validation time for
manifests. (mDNS `.local` names are discovery's business, not this module's.)
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

HOSTS_FILE = Path("/etc/hosts")
#: /etc/hosts is tiny; a larger file is not one herd should trust or parse.
MAX_BYTES = 1 << 20

_cache: dict[str, tuple[tuple[int, int], dict[str, tuple[str, ...]]]] = {}


def parse_hosts(text: str) -> dict[str, tuple[str, ...]]:
    """Lower-cased name -> its addresses, in file order (hosts(5) format)."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        for name in fields[1:]:
            addresses = table.setdefault(name.lower().rstrip("."), [])
            if address not in addresses:
                addresses.append(address)
    return {name: tuple(addresses) for name, addresses in table.items()}


Table = dict[str, tuple[str, ...]]


def hosts_table(path: str | os.PathLike[str] = HOSTS_FILE) -> Table:
    """The parsed hosts file, re-read only when its mtime or size changed."""
    key = str(path)
    try:
        st = os.stat(path)
    except OSError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _cache.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, "rb") as fh:
            text = fh.read(MAX_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return {}
    table = parse_hosts(text)
    _cache[key] = (stamp, table)
    return table


def literal(host: str) -> str | None:
    """`host` as a normalized IP address string, or None if it is a name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def netloc(host: object, port: int) -> str:
    """`host:port` as a URL writes it: an IPv6 address in brackets."""
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def lookup(host: str, path: str | os.PathLike[str] = HOSTS_FILE) -> str | None:
    """The address to connect to for `host`: itself if an IP literal, else the
    first address /etc/hosts lists for it, else None. Never asks a resolver."""
    found = literal(host)
    if found is not None:
        return found
    addresses = hosts_table(path).get(host.lower().rstrip("."))
    return addresses[0] if addresses else None


def unresolvable(host: str) -> str:
    """The one-line reason a name is refused."""
    return (
        f"host {host!r} is not an IP address and not in {HOSTS_FILE}: herd never "
        "asks DNS; use the address, or list the name in /etc/hosts"
    )
