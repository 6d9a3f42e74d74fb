"""systemd/herd-node.service is hardened like the router's unit."""

from __future__ import annotations

import configparser
import shutil
import subprocess

import pytest

from tests.router.routerproc import ROOT

#: Router hardening the agent does without, and why.
EXCEPTIONS = {
    # nvidia-smi needs /dev/nvidia*; DevicePolicy=closed plus DeviceAllow
    # admits only those.
    "PrivateDevices",
    # psutil reads /proc/meminfo, /proc/stat and /proc/pressure.
    "ProcSubset",
    # The router's state directory; the agent keeps no state.
    "StateDirectory",
    "StateDirectoryMode",
    "ProtectHome",  # read-only (Ollama's models may live in a home directory)
    "ProtectProc",
    "LimitNOFILE",
    "ExecReload",
    # Plus AF_NETLINK: listing interfaces for mDNS (getifaddrs) needs it.
    "RestrictAddressFamilies",
}


def unit(name: str) -> dict[str, list[str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep case
    out: dict[str, list[str]] = {}
    text = (ROOT / "systemd" / name).read_text()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_node_unit_has_the_routers_hardening():
    router, node = unit("herd-router.service"), unit("herd-node.service")
    hardening = {
        k
        for k in router
        if k.startswith(
            (
                "Protect",
                "Restrict",
                "Private",
                "System",
                "Capability",
                "Ambient",
                "NoNew",
                "Lock",
                "Memory",
                "Remove",
                "Device",
                "Proc",
                "State",
                "Limit",
                "Exec",
            )
        )  # fmt: skip
    } - {"ExecStart"}
    for key in sorted(hardening - EXCEPTIONS):
        assert node.get(key) == router[key], key
    assert node["ProtectHome"] == ["read-only"]
    families = node["RestrictAddressFamilies"][0].split()
    assert families == router["RestrictAddressFamilies"][0].split() + ["AF_NETLINK"]
    assert node["DevicePolicy"] == ["closed"]
    assert node["KillSignal"] == ["SIGTERM"]
    assert "herd node" in node["ExecStart"][0]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_node_unit_verifies(tmp_path):
    done = subprocess.run(
        ["systemd-analyze", "verify", str(ROOT / "systemd" / "herd-node.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in done.stderr.splitlines()
        if "herd-node.service" in line and "Command" not in line
    ]
    assert not problems, done.stderr
