"""The names the router answers to: a request's Host must be one of them.

DNS rebinding: a web page from the internet, open in a browser on the LAN
whose address is an admitted client group, points its own DNS name at the
router and then calls the router "same-origin". The router would see the
browser's admitted address and answer, and the page would read the answers.
The one thing such a request cannot hide is its Host header: it names the
attacker's domain. So the router answers only requests whose Host is

- an IP address literal (any: a page served from an address cannot be
  rebound, and the router may sit behind NAT or on several interfaces),
- `localhost`, this machine's host name, or its mDNS name (`herd-HOST.local`,
  herd.discovery.announcer), or the host the router was told to listen on
  when it is a name (`router.listen`, or `herd serve --bind` / HERD_BIND,
  which `herd serve` passes on to its workers as given),
- a name the manifest declares in `router.hostnames`,

or carries no Host at all (HTTP/1.0: no browser sends that). The port is not
checked. Verdicts are cached per Host value: the check is a dict lookup.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from herd.digits import decimal
from herd.manifest.model import Fleet
from herd.settings import BIND

#: Distinct Host values remembered (the header is the caller's to choose).
_CACHE_MAX = 512


def always_known() -> frozenset[str]:
    """Names every router answers to, whatever the manifest says."""
    # Imported here: `herd apply` checks its --registry with this module and
    # need not load discovery (mDNS, membership) for one label.
    from herd.discovery.announcer import host_label

    own = socket.gethostname().lower().rstrip(".")
    bound = _host_part(BIND.resolve() or "")[0]
    return frozenset(
        name.lower().rstrip(".")
        for name in ("localhost", own, f"herd-{host_label()}.local", bound)
        if name
    )


def _host_part(value: str) -> tuple[str, bool]:
    """(host without port, is an IPv6 literal) of a Host value; ("", False)
    when it is malformed."""
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and _port(rest[1:]))):
            return "", False
        return value[1:end], True
    name, sep, port = value.rpartition(":")
    if not sep:
        return value, False
    if not _port(port) or ":" in name:
        return "", False
    return name, False


def _port(text: str) -> bool:
    return text == "" or decimal(text, 5) is not None


class KnownHosts:
    """The Host values one manifest revision accepts."""

    def __init__(self, names: Iterable[str]):
        self.names = frozenset(n.lower().rstrip(".") for n in names)
        self._seen: dict[str, bool] = {}

    @classmethod
    def of(cls, fleet: Fleet) -> KnownHosts:
        listen = fleet.router.listen.rpartition(":")[0].strip("[]")
        return cls({*always_known(), *fleet.router.hostnames, listen})

    def allows(self, host: str | None) -> bool:
        """Whether a request with this Host header value may be answered."""
        if not host:
            return True
        verdict = self._seen.get(host)
        if verdict is None:
            verdict = self._judge(host)
            if len(self._seen) >= _CACHE_MAX:
                self._seen.clear()
            self._seen[host] = verdict
        return verdict

    def _judge(self, host: str) -> bool:
        name, bracketed = _host_part(host)
        if not name:
            return False
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return not bracketed and name.lower().rstrip(".") in self.names
        # "[1.2.3.4]" is no IPv6 literal; a zone id (fe80::1%25eth0) is no
        # address either.
        return bracketed == (address.version == 6)


class HostCheck:
    """`KnownHosts` of the revision being served, rebuilt when it changes."""

    __slots__ = ("_fleet", "_known")

    def __init__(self) -> None:
        self._fleet: Fleet | None = None
        self._known = KnownHosts(())

    def allows(self, fleet: Fleet, host: str | None) -> bool:
        if fleet is not self._fleet:
            self._known = KnownHosts.of(fleet)
            self._fleet = fleet
        return self._known.allows(host)
