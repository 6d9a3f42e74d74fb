"""Two network namespaces joined by a veth pair, for multicast tests.

Every multicast packet of the discovery tests stays inside namespaces created
here (never the host's interfaces). `NetPair.popen(ns, argv)` runs a process
inside one; `NetPair.call(ns, fn)` runs `fn` in a thread that entered it
(network namespaces are per thread), so the test itself can open sockets there.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CLONE_NEWNET = 0x40000000
A_ADDR, B_ADDR, SUBNET = "10.77.0.1", "10.77.0.2", "10.77.0.0/24"
A6_ADDR, B6_ADDR, SUBNET6 = "fd77::1", "fd77::2", "fd77::/64"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"herd-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as ex:
        return f"cannot create a network namespace: {ex}"
    return None


@dataclass
class NetPair:
    a: str
    b: str
    dev_a: str
    dev_b: str

    @classmethod
    def create(cls) -> NetPair:
        tag = uuid.uuid4().hex[:6]
        pair = cls(f"herd-{tag}-a", f"herd-{tag}-b", f"hva{tag}", f"hvb{tag}")
        _ip("netns", "add", pair.a)
        _ip("netns", "add", pair.b)
        _ip("link", "add", pair.dev_a, "netns", pair.a, "type", "veth", "peer",
            "name", pair.dev_b, "netns", pair.b)  # fmt: skip
        for ns, dev, addr in (
            (pair.a, pair.dev_a, A_ADDR),
            (pair.b, pair.dev_b, B_ADDR),
        ):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        return pair

    def destroy(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def add_address(self, ns: str, address: str) -> None:
        dev = self.dev_a if ns == self.a else self.dev_b
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)

    def add_ipv6(self) -> None:
        """Unique local IPv6 addresses on both ends (usable at once: no DAD)."""
        for ns, dev, addr in (
            (self.a, self.dev_a, A6_ADDR),
            (self.b, self.dev_b, B6_ADDR),
        ):
            _ip("-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")

    def popen(self, ns: str, argv: list[str], **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)

    def run(self, ns: str, argv: list[str], timeout: float = 60) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(f"{argv[:3]} failed: {done.stderr}")
        return done.stdout

    def call(
        self, ns: str, fn: Callable[..., Any], *args: Any, timeout: float = 30
    ) -> Any:
        """`fn(*args)` in a thread inside namespace `ns`; its result or exception."""
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                box["value"] = fn(*args)
            except BaseException as ex:  # noqa: BLE001 - re-raised in the caller
                box["error"] = ex

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{fn} did not finish in {timeout} s inside {ns}")
        if "error" in box:
            raise box["error"]
        return box.get("value")
