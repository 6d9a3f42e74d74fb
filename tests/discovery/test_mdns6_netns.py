"""mDNS over IPv6 (ff02::fb) between two network namespaces: `zeroconf`,
limited to IPv6, finds herd's router and its AAAA record, and herd hears a
service zeroconf announces over IPv6 only."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.discovery.agentkit import make_key
from tests.discovery.netns import A6_ADDR, B6_ADDR, SUBNET6
from tests.discovery.test_mdns_netns import (
    PORT,
    manifest,
    ns_router,  # noqa: F401 - fixture
    wait_for,
    zeroconf,
)

pytestmark = pytest.mark.e2e


def manifest6(key) -> str:
    doc = yaml.safe_load(manifest(key))
    doc["discovery"]["mdns"]["networks"].append(SUBNET6)
    return yaml.safe_dump(doc, sort_keys=False)


def test_zeroconf_over_ipv6_resolves_the_router(netpair, ns_router, tmp_path):  # noqa: F811
    netpair.add_ipv6()
    key = make_key(tmp_path)
    ns_router(manifest6(tmp_path / "fleet.key"))
    info = zeroconf(
        netpair,
        netpair.b,
        """
        import json, time
        from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf
        zc = Zeroconf(ip_version=IPVersion.V6Only)
        names = []
        class L(ServiceListener):
            def add_service(self, zc, type_, name): names.append(name)
            def update_service(self, zc, type_, name): pass
            def remove_service(self, zc, type_, name): pass
        ServiceBrowser(zc, "_herd._tcp.local.", L())
        deadline = time.monotonic() + 20
        while not names and time.monotonic() < deadline:
            time.sleep(0.1)
        info = zc.get_service_info("_herd._tcp.local.", names[0], timeout=5000)
        print(json.dumps({"port": info.port,
            "v6": info.parsed_addresses(IPVersion.V6Only),
            "fp": info.properties[b"fp"].decode()}))
        zc.close()
        """,
    )
    assert info["port"] == PORT
    assert info["v6"] == [A6_ADDR]
    assert info["fp"] == key.fingerprint


def test_router_hears_a_node_zeroconf_announces_over_ipv6(netpair, ns_router, tmp_path):  # noqa: F811
    netpair.add_ipv6()
    make_key(tmp_path)
    r = ns_router(manifest6(tmp_path / "fleet.key"))
    registrar = netpair.popen(
        netpair.b,
        [sys.executable, "-c", textwrap.dedent(f"""
            import socket, time
            from zeroconf import IPVersion, ServiceInfo, Zeroconf
            zc = Zeroconf(ip_version=IPVersion.V6Only)
            info = ServiceInfo("_herd-node._tcp.local.",
                "zc6-node._herd-node._tcp.local.",
                addresses=[socket.inet_pton(socket.AF_INET6, "{B6_ADDR}")],
                port=11434, properties={{"url": "http://[{B6_ADDR}]:11434"}},
                server="zc6-node.local.")
            zc.register_service(info)
            print("registered", flush=True)
            time.sleep(60)
            """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert registrar.stdout.readline().strip() == "registered"

        def candidates() -> list:
            return r.get("/fleet/status")[1]["discovery"]["candidates"]

        assert wait_for(
            lambda: any(c["name"] == "zc6-node" for c in candidates()), timeout=20
        ), r.log()
        node = next(c for c in candidates() if c["name"] == "zc6-node")
        assert node["addresses"] == [B6_ADDR] and node["port"] == 11434
        assert node["admitted"] is False
    finally:
        registrar.kill()
        registrar.wait(5)
