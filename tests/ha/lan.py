"""A small LAN of network namespaces around one bridge, for the keepalived tests.

`Lan.create({"r1": "10.88.0.11", ...})` makes a namespace `lan` holding a
bridge and, per host, a namespace whose `eth0` is plugged into it. VRRP
adverts, the virtual address and every request stay inside these namespaces.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Any

PREFIX = 24


def ip(*args: str) -> str:
    done = subprocess.run(
        ["ip", *args], check=True, capture_output=True, text=True, timeout=10
    )
    return done.stdout


@dataclass
class Lan:
    tag: str
    hosts: dict[str, str]
    names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, hosts: dict[str, str]) -> Lan:
        lan = cls(uuid.uuid4().hex[:6], hosts)
        bridge_ns = lan.ns("lan")
        ip("netns", "add", bridge_ns)
        try:
            ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
            ip("-n", bridge_ns, "link", "set", "br0", "up")
            for i, (host, address) in enumerate(hosts.items()):
                ns = lan.ns(host)
                ip("netns", "add", ns)
                port = f"p{i}{lan.tag}"
                ip("-n", bridge_ns, "link", "add", port, "type", "veth", "peer",
                   "name", "eth0", "netns", ns)  # fmt: skip
                ip("-n", bridge_ns, "link", "set", port, "master", "br0", "up")
                ip("-n", ns, "addr", "add", f"{address}/{PREFIX}", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            lan.destroy()
            raise
        return lan

    def ns(self, host: str) -> str:
        return self.names.setdefault(host, f"herd-ha-{self.tag}-{host}")

    def destroy(self) -> None:
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def popen(self, host: str, argv: list[str], **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], **kw)

    def run(
        self, host: str, argv: list[str], timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    def holds(self, host: str, address: str) -> bool:
        """Whether `host`'s eth0 carries `address` right now."""
        return f" {address}/" in ip("-n", self.ns(host), "-4", "addr", "show", "eth0")
