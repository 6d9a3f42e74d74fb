"""The caller's address, in one canonical form, decided once per request.

A router bound to every address of a dual-stack host (`[::]`) sees IPv4
callers as IPv4-mapped IPv6 addresses (`::ffff:10.30.0.7`). Client networks,
node addresses, rate limits, log lines and error messages all speak plain
IPv4 for those callers, so the address is normalized once, at the edge (the
admission middleware), and everything after it uses the normalized text.
"""

from __future__ import annotations

import ipaddress

_CACHE_MAX = 4096
_cache: dict[str, str] = {}


def peer_address(raw: str | None) -> str:
    """`raw` (a socket's peer address) in canonical text form.

    IPv4-mapped IPv6 becomes dotted IPv4, a zone id (`fe80::1%eth0`) is
    dropped, IPv6 is compressed. Anything that is not an IP address comes
    back unchanged (it then matches no network). Cached: the same few
    addresses call again and again.
    """
    if not raw:
        return ""
    known = _cache.get(raw)
    if known is not None:
        return known
    try:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
    except ValueError:
        text = raw
    else:
        mapped = getattr(address, "ipv4_mapped", None)
        text = str(mapped if mapped is not None else address)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[raw] = text
    return text
