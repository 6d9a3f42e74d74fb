"""The router's kernel-enforced address allowlist: a systemd drop-in per revision.

`systemd/herd-router.service` has `IPAddressDeny=any`, so the kernel drops every
packet of the router's cgroup except to or from the addresses the drop-in
allows: loopback, link-local, the mDNS group (224.0.0.251, ff02::fb), the
manifest's client networks (who may call) and node networks, literal node
addresses and the discovery networks agents join from (where nodes may be).
`herd apply` and `herd rollback` write it after recording a revision;
`systemctl daemon-reload` loads it.

`dropin_text` is pure; `after_record` is the I/O edge, and it never fails an
apply: a drop-in that cannot be written is a note on stderr.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from herd import hosts
from herd.atomicfile import replace_file
from herd.manifest.model import Fleet
from herd.settings import FIREWALL_DROPIN, SYSTEM_STATE_DIR, is_system_state_dir

#: The unit directory whose existence means "systemd manages units here".
SYSTEM_UNITS = Path("/etc/systemd/system")
DROPIN_DIR_NAME = "herd-router.service.d"
DROPIN_FILE = "50-herd-address-allow.conf"
#: Always allowed: loopback, link-local (IPv4 and IPv6) and the mDNS group.
BASE_ALLOW = ("localhost", "link-local", "224.0.0.251", "ff02::fb")
OFF = ("0", "off", "no", "none", "false")


def allowed_networks(fleet: Fleet) -> tuple[list[str], list[str]]:
    """(networks, notes): client and node networks, node addresses, collapsed.

    A node named by host name is allowed at its /etc/hosts address (herd never
    asks DNS); one with none there gets a note instead.
    """
    nets: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    notes: list[str] = []
    for client in fleet.router.clients:
        nets.update(client.networks)
    nets.update(fleet.router.node_networks)
    # Agents that join by themselves (mDNS, or `herd node --router`) send from here.
    nets.update(fleet.discovery.mdns_networks)
    # The other routers of a keepalived pair (router.ha) fetch bundles and status.
    if fleet.router.ha is not None:
        nets.update(ipaddress.ip_network(p) for p in fleet.router.ha.peers)
    for node in fleet.nodes:
        host = urlsplit(node.url).hostname or ""
        address = hosts.lookup(host)  # an IP literal, or the name's /etc/hosts entry
        if address is None:
            notes.append(f"node {node.name}: {host!r} has no address in /etc/hosts")
            continue
        nets.add(ipaddress.ip_network(address))
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return [str(n) for n in [*v4, *v6]], notes


def dropin_text(fleet: Fleet, revision: int | None) -> str:
    """The drop-in for one revision (deterministic: same fleet, same bytes)."""
    networks, notes = allowed_networks(fleet)
    lines = [
        f"# Written by `herd apply` for revision {revision} of fleet {fleet.name!r}.",
        "# Do not edit: the next apply replaces it. Load it with",
        "#   systemctl daemon-reload",
        "# The unit has IPAddressDeny=any: only these addresses pass the kernel.",
        *(f"# note: {note}" for note in notes),
        "[Service]",
        "IPAddressAllow=",
        "IPAddressAllow=" + " ".join(BASE_ALLOW),
    ]
    # One line per few networks keeps long fleets readable.
    for start in range(0, len(networks), 8):
        lines.append("IPAddressAllow=" + " ".join(networks[start : start + 8]))
    return "\n".join(lines) + "\n"


def dropin_dir(
    configured: str | None = None, state_dir: str | os.PathLike[str] | None = None
) -> Path | None:
    """Where to write, or None to skip: HERD_SYSTEMD_DROPIN_DIR, else the system
    unit directory when running as root on a systemd host and applying to the
    system state directory (the one herd-router.service serves)."""
    value = FIREWALL_DROPIN.resolve(configured)
    if value:
        return None if value.strip().lower() in OFF else Path(value)
    if os.geteuid() == 0 and SYSTEM_UNITS.is_dir() and is_system_state_dir(state_dir):
        return SYSTEM_UNITS / DROPIN_DIR_NAME
    return None


def write_dropin(directory: Path, text: str) -> Path:
    """Replace DIRECTORY/DROPIN_FILE atomically (temp file, fsync, rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / DROPIN_FILE
    replace_file(target, text.encode(), mode=0o644)
    return target


def after_record(
    fleet: Fleet,
    revision: int | None,
    state_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Write the drop-in for a recorded revision; notes go to stderr, never raise."""
    try:
        if (FIREWALL_DROPIN.resolve() or "").strip().lower() in OFF:
            return None  # turned off on purpose: nothing to say
        directory = dropin_dir(state_dir=state_dir)
        if directory is None and not is_system_state_dir(state_dir):
            print(
                f"note: no systemd address allowlist written: {state_dir} is not "
                f"{SYSTEM_STATE_DIR}, the state herd-router.service serves (set "
                f"{FIREWALL_DROPIN.env}=DIR to write one)",
                file=sys.stderr,
            )
            return None
        if directory is None:
            print(
                "note: no systemd address allowlist written (not root, or no "
                f"{SYSTEM_UNITS}; set {FIREWALL_DROPIN.env}=DIR to write one)",
                file=sys.stderr,
            )
            return None
        path = write_dropin(directory, dropin_text(fleet, revision))
    except Exception as ex:  # noqa: BLE001 - the revision is recorded; only warn
        print(f"note: systemd address allowlist not written: {ex}", file=sys.stderr)
        return None
    print(f"Wrote {path}; run `systemctl daemon-reload` to load it.", file=sys.stderr)
    return path
