"""This router's keepalived configuration, from the manifest's `router.ha`.

Two (or more) routers apply the same manifest; each finds itself in
`router.ha.peers` by the address it holds, and `herd apply` writes its
keepalived.conf: one VRRP instance that holds the virtual address on the
router with the highest priority whose `/readyz` answers (a `vrrp_script`
runs curl against the local router every `check_interval_s`), PASS
authentication with the secret from `auth_secret_file`, and unicast adverts to
the other routers (networks that filter multicast still carry them). The
failover itself is keepalived's; herd only writes its configuration.

`config_text` is pure; `after_record` is the I/O edge, and like the firewall
drop-in it never fails an apply: a configuration that cannot be written, or
that `keepalived -t` rejects, is a note on stderr.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import stat
import string
import subprocess
import sys
from pathlib import Path

from herd.atomicfile import replace_file
from herd.manifest.model import Fleet, HighAvailability
from herd.settings import KEEPALIVED_CONF, SYSTEM_STATE_DIR, is_system_state_dir

DEFAULT_CONF = Path("/etc/keepalived/keepalived.conf")
#: First line of every file herd writes: apply replaces only such a file.
HEADER = "# Written by `herd apply`"
OFF = ("0", "off", "no", "none", "false")
#: VRRP v2 PASS authentication carries at most 8 characters.
SECRET_MAX = 8
#: Characters keepalived's parser would take as a comment, quote or block.
SECRET_FORBIDDEN = set("#!\"'{}\\")
CONFIG_TEST_TIMEOUT_S = 10.0
#: An interface name keepalived reads as one word (no blank, quote, comment
#: sign, brace or `$` substitution): the schema's pattern, checked again here.
INTERFACE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


class HaError(Exception):
    """Why this host's keepalived configuration cannot be written."""


def own_address(ha: HighAvailability, fib_trie: str | None = None) -> str | None:
    """The address of `ha.peers` this host holds (its own, not the virtual one).

    Read from the kernel's local routing table (/proc/net/fib_trie: the
    addresses of this network namespace); where that is unreadable, binding
    to each address tells (it succeeds only for a local address, unless
    net.ipv4.ip_nonlocal_bind is set, which is why the table comes first).
    """
    text = fib_trie if fib_trie is not None else _read(FIB_TRIE)
    if text:
        local = local_addresses(text)
        return next((a for a in ha.peers if a in local), None)
    for address in ha.peers:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                continue
            return address
    return None


FIB_TRIE = Path("/proc/net/fib_trie")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def local_addresses(fib_trie: str) -> set[str]:
    """The IPv4 addresses the kernel routes as this host's own ("/32 host LOCAL")."""
    found, last = set(), None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|--"):
            last = text[3:].strip()
        elif text.startswith("/32 host LOCAL") and last:
            found.add(last)
    return found


def read_secret(path: str) -> str:
    """The VRRP password in `path`: 1-8 printable characters, nothing else."""
    try:
        raw = Path(path).read_bytes()[:256]
    except OSError as ex:
        raise HaError(
            f"router.ha.auth_secret_file {path}: {ex.strerror or ex}"
        ) from None
    secret = raw.decode("ascii", errors="replace").strip("\r\n")
    bad = not secret or len(secret) > SECRET_MAX
    if bad or any(c not in string.printable or c.isspace() for c in secret):
        raise HaError(
            f"router.ha.auth_secret_file {path}: the VRRP password must be 1-"
            f"{SECRET_MAX} printable characters without spaces (VRRP v2 limit)"
        )
    if SECRET_FORBIDDEN & set(secret):
        raise HaError(
            f"router.ha.auth_secret_file {path}: the password may not contain "
            + " ".join(sorted(SECRET_FORBIDDEN))
        )
    return secret


def readyz_url(fleet: Fleet) -> str:
    """The local router's /readyz (router.ha requires a wildcard listen)."""
    port = fleet.router.listen.rpartition(":")[2]
    return f"http://127.0.0.1:{port}/readyz"


def curl_path() -> str:
    return shutil.which("curl") or "/usr/bin/curl"


def config_text(
    fleet: Fleet,
    own: str,
    secret: str,
    revision: int | None,
    curl: str = "/usr/bin/curl",
) -> str:
    """keepalived.conf for the router at `own` (same inputs, same bytes)."""
    ha = fleet.router.ha
    assert ha is not None
    words(ha, own)
    others = [p for p in ha.peers if p != own]
    interval = ha.check_interval_s
    check = (
        f"{curl} -fsS -o /dev/null --max-time {interval} --noproxy 127.0.0.1 "
        f"{readyz_url(fleet)}"
    )
    lines = [
        f"{HEADER} for revision {revision} of fleet {fleet.name!r}.",
        "# Do not edit: the next apply replaces it. Load it with",
        "#   systemctl reload keepalived",
        f"# This router: {own}, priority {ha.priority_of(own)}; peers: "
        + ", ".join(others),
        "",
        "global_defs {",
        f"    router_id herd-{own}",
        "    script_user root",
        "    enable_script_security",
        "}",
        "",
        "# Ready means the local router answers /readyz with 200 (a node is up).",
        "vrrp_script herd_ready {",
        f'    script "{check}"',
        f"    interval {interval}",
        f"    timeout {interval}",
        "    fall 1",
        "    rise 2",
        "}",
        "",
        "vrrp_instance herd {",
        "    state BACKUP",
        f"    interface {ha.interface}",
        f"    virtual_router_id {ha.virtual_router_id}",
        f"    priority {ha.priority_of(own)}",
        f"    advert_int {ha.advert_interval_s}",
        f"    unicast_src_ip {own}",
        "    unicast_peer {",
        *(f"        {peer}" for peer in others),
        "    }",
        "    authentication {",
        "        auth_type PASS",
        f"        auth_pass {secret}",
        "    }",
        "    virtual_ipaddress {",
        f"        {ha.virtual_address}/32 dev {ha.interface}",
        "    }",
        "    track_script {",
        "        herd_ready",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def words(ha: HighAvailability, own: str) -> None:
    """Refuse any manifest value that would not stay one word of its line.

    keepalived.conf has no quoting for these fields: a newline, blank, `#`,
    `!`, brace or `$` would start another statement, a comment or a
    substitution. The schema and herd.manifest.hachecks refuse such values
    already; this check keeps the writer safe on its own.
    """
    if not INTERFACE.fullmatch(ha.interface):
        raise HaError(
            f"router.ha.interface {ha.interface!r}: not an interface name (1-15 "
            "letters, digits or _ . : @ -)"
        )
    named = [("router.ha.virtual_address", ha.virtual_address)]
    named += [(f"router.ha.peers[{i}]", peer) for i, peer in enumerate(ha.peers)]
    named.append(("this router's address", own))
    for field, text in named:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            address = None
        if address is None or str(address) != text:
            raise HaError(f"{field} {text!r}: not an IPv4 address")
        if address.version != 4:
            raise HaError(
                f"{field} {text}: IPv6 is not supported by router.ha "
                "(keepalived VRRP v2 moves an IPv4 address)"
            )


def conf_path(
    configured: str | None = None, state_dir: str | os.PathLike[str] | None = None
) -> Path | None:
    """Where to write, or None to skip: HERD_KEEPALIVED_CONF, else
    /etc/keepalived/keepalived.conf when running as root and applying to the
    system state directory (the one herd-router.service serves)."""
    value = KEEPALIVED_CONF.resolve(configured)
    if value:
        return None if value.strip().lower() in OFF else Path(value)
    if os.geteuid() == 0 and is_system_state_dir(state_dir):
        return DEFAULT_CONF
    return None


def config_test(path: Path) -> None:
    """`keepalived -t -f PATH` when keepalived is installed; raise on a rejection."""
    binary = shutil.which("keepalived")
    if binary is None:
        return
    try:
        done = subprocess.run(
            [binary, "-t", "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=CONFIG_TEST_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as ex:
        raise HaError(f"keepalived -t could not run: {ex}") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise HaError("keepalived -t rejected it: " + " | ".join(why))


def write_conf(target: Path, text: str) -> bool:
    """Replace `target` (mode 0600: it holds the secret) if the text changed.

    A file at `target` that herd did not write is never replaced. The new
    text passes `keepalived -t` before it takes the old one's place.
    """
    try:
        old = target.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        old = None
    if old is not None and not old.startswith(HEADER):
        raise HaError(
            f"{target} exists and was not written by herd; move it away, or set "
            f"{KEEPALIVED_CONF.env}=FILE and include that file from it"
        )
    if old is not None and _body(old) == _body(text):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_file(target, text.encode(), mode=0o600, suffix=".conf", check=config_test)
    return True


def _body(text: str) -> str:
    """The configuration without its first line (which names the revision)."""
    return text.split("\n", 1)[-1]


def _loose(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def plan_note(fleet: Fleet) -> str | None:
    """One line for the plan: what apply would do with keepalived here."""
    ha = fleet.router.ha
    if ha is None:
        return None
    target = conf_path()
    own = own_address(ha)
    if own is None:
        return (
            f"keepalived: this host holds none of router.ha.peers "
            f"({', '.join(ha.peers)}); apply writes no keepalived configuration"
        )
    head = (
        f"keepalived: this router is {own} (priority {ha.priority_of(own)}) for "
        f"virtual address {ha.virtual_address} on {ha.interface}"
    )
    if target is None:
        return f"{head}; no file is written ({KEEPALIVED_CONF.env} is off, or not root)"
    return f"{head}; {target}: {_change(fleet, own, target)}"


def _change(fleet: Fleet, own: str, target: Path) -> str:
    """Whether apply would create, change or keep `target` (secret needed)."""
    assert fleet.router.ha is not None
    try:
        text = config_text(
            fleet, own, read_secret(fleet.router.ha.auth_secret_file), 0, curl_path()
        )
    except HaError as ex:
        return f"cannot be written: {ex}"
    try:
        old = target.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "apply creates it"
    except OSError as ex:
        return f"unreadable ({ex.strerror})"
    if not old.startswith(HEADER):
        return "exists and was not written by herd: apply leaves it alone"
    return "unchanged" if _body(old) == _body(text) else "apply replaces it"


def after_record(
    fleet: Fleet,
    revision: int | None,
    state_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Write this router's keepalived.conf; notes go to stderr, never raise."""
    ha = fleet.router.ha
    if ha is None:
        return None
    try:
        if (KEEPALIVED_CONF.resolve() or "").strip().lower() in OFF:
            return None  # turned off on purpose
        target = conf_path(state_dir=state_dir)
        if target is None and not is_system_state_dir(state_dir):
            print(
                "note: router.ha: no keepalived configuration written: "
                f"{state_dir} is not {SYSTEM_STATE_DIR}, the state "
                f"herd-router.service serves (set {KEEPALIVED_CONF.env}=FILE to "
                "write one)",
                file=sys.stderr,
            )
            return None
        if target is None:
            print(
                "note: router.ha: no keepalived configuration written (not root; "
                f"set {KEEPALIVED_CONF.env}=FILE to write one)",
                file=sys.stderr,
            )
            return None
        own = own_address(ha)
        if own is None:
            raise HaError(
                f"this host holds none of router.ha.peers ({', '.join(ha.peers)})"
            )
        if _loose(ha.auth_secret_file):
            print(
                f"note: {ha.auth_secret_file} is readable by others; chmod 600 it",
                file=sys.stderr,
            )
        text = config_text(
            fleet, own, read_secret(ha.auth_secret_file), revision, curl_path()
        )
        changed = write_conf(target, text)
    except Exception as ex:  # noqa: BLE001 - the revision is recorded; only warn
        print(f"note: keepalived configuration not written: {ex}", file=sys.stderr)
        return None
    if changed:
        print(
            f"Wrote {target}; run `systemctl reload keepalived` to load it "
            "(`systemctl enable --now keepalived` the first time).",
            file=sys.stderr,
        )
    return target
