"""The systemd files in systemd/: units verify and are hardened; the sysusers and
tmpfiles snippets create the `herd` user and directories; `herd apply` writes
the router's address allowlist drop-in.

Every *.service in systemd/ is checked, so a unit added later is covered too.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from herd import hosts
from herd.manifest import firewall, load_bytes
from tests.conftest import EXAMPLE, ROOT

SYSTEMD = ROOT / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (.ci/run installs the systemd package)",
)


def unit_id(path: Path) -> str:
    return path.name


def exposure(unit: Path) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert match, out.stdout + out.stderr
    return float(match.group(1))


def test_units_exist() -> None:
    assert SYSTEMD / "herd-router.service" in UNITS


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=unit_id)
def test_unit_verifies(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=unit_id)
def test_unit_exposure_at_most_2(unit: Path) -> None:
    score = exposure(unit)
    assert score <= MAX_EXPOSURE, f"{unit.name}: exposure {score}"
    # The README states each unit's score; keep it true.
    readme = (ROOT / "README.md").read_text()
    assert f"`{unit.name}`: exposure {score}" in readme, (
        f"README must say `{unit.name}`: exposure {score}"
    )


@pytest.mark.parametrize("unit", UNITS, ids=unit_id)
def test_unit_finds_herd_outside_home(unit: Path) -> None:
    """ProtectHome hides /root and /home: herd must come from elsewhere."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(_without_repeats(unit.read_text()))
    service = parser["Service"]
    assert service.get("ProtectHome") in ("yes", "read-only", "tmpfs")
    exec_start = service["ExecStart"]
    assert "/root" not in exec_start and "/home" not in exec_start
    if exec_start.startswith("/usr/bin/env "):
        path = _environment(unit.read_text()).get("PATH", "")
        assert path, "ExecStart=/usr/bin/env needs Environment=PATH=..."
        for entry in path.split(":"):
            assert not entry.startswith(("/root", "/home")), entry


def test_router_unit_notify_and_deny_by_default() -> None:
    text = (SYSTEMD / "herd-router.service").read_text()
    assert "\nType=notify\n" in text
    assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in text
    assert "\nIPAddressDeny=any\n" in text


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None
    or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles missing",
)
def test_sysusers_and_tmpfiles_create_user_and_dirs(tmp_path: Path) -> None:
    """Applied to an empty root (--root), as package scripts would on a host."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for kind in ("sysusers", "tmpfiles"):
        target = root / "usr/lib" / f"{kind}.d" / "herd.conf"
        target.parent.mkdir(parents=True)
        shutil.copy(SYSTEMD / f"herd.{kind}.conf", target)
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        args = [tool, f"--root={root}"]
        if tool == "systemd-tmpfiles":
            args.append("--create")
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    herd = passwd["herd"]
    assert herd[5] == "/var/lib/herd" and herd[6] == "/usr/sbin/nologin"
    uid, gid = int(herd[2]), int(herd[3])
    assert uid < 1000  # a system user
    state = (root / "var/lib/herd").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (uid, gid, 0o750)
    etc = (root / "etc/herd").stat()
    assert (etc.st_uid, etc.st_gid, etc.st_mode & 0o777) == (0, gid, 0o750)


# -- the address allowlist drop-in -------------------------------------------


def test_dropin_allows_base_and_manifest_networks() -> None:
    fleet = load_bytes(EXAMPLE.read_bytes(), str(EXAMPLE), str(EXAMPLE.parent))
    text = firewall.dropin_text(fleet, 7)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[0] == "[Service]"
    assert lines[1] == "IPAddressAllow="  # reset, then exactly this list
    allowed = " ".join(line.split("=", 1)[1] for line in lines[2:]).split()
    assert allowed[:4] == ["localhost", "link-local", "224.0.0.251", "ff02::fb"]
    # etc/fleet.yaml: client networks (10.20.0.0/24 admins, 10.30/16, 10.40/16,
    # loopback), the node network 10.20.1.0/24 (node URLs lie inside it) and
    # the discovery network 10.20.2.0/24; adjacent ones collapsed.
    assert allowed[4:] == [
        "10.20.0.0/23",
        "10.20.2.0/24",
        "10.30.0.0/16",
        "10.40.0.0/16",
        "127.0.0.0/8",
        "::1/128",
    ]
    assert "revision 7" in text
    assert firewall.dropin_text(fleet, 7) == text  # deterministic


def test_dropin_adds_node_addresses_and_collapses(tmp_path, monkeypatch) -> None:
    etc_hosts = tmp_path / "hosts"
    etc_hosts.write_text("127.0.0.1 localhost\n10.9.8.7 gpu-c.lan gpu-c\n")
    monkeypatch.setattr(hosts, "HOSTS_FILE", etc_hosts)
    monkeypatch.setattr(hosts.lookup, "__defaults__", (etc_hosts,))
    doc = """
apiVersion: herd/v1
kind: Fleet
metadata: {name: f}
router:
  clients:
    - {name: a, networks: [10.1.0.0/24, 10.1.1.0/24]}
    - {name: b, networks: ["fd00::/64"]}
nodes:
  - {name: n1, url: "http://192.168.5.7:11434"}
  - {name: n2, url: "http://[fd00:1::7]:11434"}
  - {name: n3, url: "http://gpu-c.lan:11434"}
models: []
"""
    fleet = load_bytes(doc.encode(), "t.yaml", None)
    text = firewall.dropin_text(fleet, 1)
    allowed = " ".join(
        line.split("=", 1)[1]
        for line in text.splitlines()
        if line.startswith("IPAddressAllow=")
    ).split()
    assert allowed[4:] == [
        "10.1.0.0/23",
        "10.9.8.7/32",
        "192.168.5.7/32",
        "fd00::/64",
        "fd00:1::7/128",
    ]


def test_apply_writes_dropin_to_configured_dir(herd, tmp_path, example_text) -> None:
    dropins = tmp_path / "herd-router.service.d"
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(example_text)
    env = {"HERD_SYSTEMD_DROPIN_DIR": str(dropins)}
    result = herd("apply", "--yes", str(fleet_file), env=env)
    assert result.returncode == 0, result.stderr
    written = dropins / firewall.DROPIN_FILE
    assert f"Wrote {written}" in result.stderr
    assert "systemctl daemon-reload" in result.stderr
    fleet = load_bytes(example_text.encode(), str(fleet_file), str(tmp_path))
    assert written.read_text() == firewall.dropin_text(fleet, 1)
    assert (written.stat().st_mode & 0o777) == 0o644


def test_apply_never_fails_because_of_the_dropin(herd, tmp_path, example_text) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(example_text)
    env = {"HERD_SYSTEMD_DROPIN_DIR": str(blocker / "sub")}
    result = herd("apply", "--yes", str(fleet_file), env=env)
    assert result.returncode == 0, result.stderr
    assert "note: systemd address allowlist not written" in result.stderr
    assert "Recorded revision 1" in result.stdout
    assert herd("history", "--json").returncode == 0


def test_dropin_dir_default_skips_when_not_root(monkeypatch) -> None:
    monkeypatch.delenv("HERD_SYSTEMD_DROPIN_DIR", raising=False)
    monkeypatch.setattr(firewall.os, "geteuid", lambda: 1000)
    assert firewall.dropin_dir() is None
    monkeypatch.setattr(firewall.os, "geteuid", lambda: 0)
    monkeypatch.setattr(firewall, "SYSTEM_UNITS", Path("/nonexistent/systemd"))
    assert firewall.dropin_dir() is None
    monkeypatch.setattr(firewall, "SYSTEM_UNITS", Path("/"))
    assert firewall.dropin_dir() == Path("/herd-router.service.d")
    monkeypatch.setenv("HERD_SYSTEMD_DROPIN_DIR", "off")
    assert firewall.dropin_dir() is None


def _without_repeats(text: str) -> str:
    """configparser keeps one value per key: drop repeated keys (first wins)."""
    seen: set[tuple[str, str]] = set()
    section = ""
    out = []
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif "=" in line and not line.startswith("#"):
            key = (section, line.split("=", 1)[0])
            if key in seen:
                continue
            seen.add(key)
        out.append(line)
    return "\n".join(out)


def _environment(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            key, _, value = line.split("=", 1)[1].partition("=")
            env[key] = value
    return env


def test_dropin_default_is_for_the_system_state_dir_only(
    tmp_path, monkeypatch, capsys
) -> None:
    """As root, an apply into another state dir (a demo, a test, a scratch copy)
    must not rewrite the production router's allowlist; the system state dir,
    or a directory named on purpose, still gets it."""
    fleet = load_bytes(EXAMPLE.read_bytes(), str(EXAMPLE), str(EXAMPLE.parent))
    units = tmp_path / "etc-systemd-system"
    units.mkdir()
    monkeypatch.delenv("HERD_SYSTEMD_DROPIN_DIR", raising=False)
    monkeypatch.setattr(firewall.os, "geteuid", lambda: 0)
    monkeypatch.setattr(firewall, "SYSTEM_UNITS", units)
    scratch = tmp_path / "scratch-state"
    assert firewall.after_record(fleet, 3, scratch) is None
    assert not any(units.iterdir())
    note = capsys.readouterr().err
    assert f"{scratch} is not /var/lib/herd" in note
    assert "HERD_SYSTEMD_DROPIN_DIR=DIR" in note
    written = firewall.after_record(fleet, 3, "/var/lib/herd")
    assert written == units / firewall.DROPIN_DIR_NAME / firewall.DROPIN_FILE
    assert "revision 3" in written.read_text()
    chosen = tmp_path / "chosen"
    monkeypatch.setenv("HERD_SYSTEMD_DROPIN_DIR", str(chosen))
    assert firewall.after_record(fleet, 4, scratch) == chosen / firewall.DROPIN_FILE


def test_apply_into_another_state_dir_leaves_the_system_files_alone(
    herd, tmp_path, example_text
) -> None:
    """The real CLI, as whoever runs the suite (root in CI): with no drop-in
    directory given, an apply into a temporary state dir leaves the system's
    drop-in as it was, and says why when it is root."""
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(example_text)
    dropin = (
        Path("/etc/systemd/system") / firewall.DROPIN_DIR_NAME / firewall.DROPIN_FILE
    )
    before = dropin.read_bytes() if dropin.exists() else None
    env = {"HERD_SYSTEMD_DROPIN_DIR": "", "HERD_KEEPALIVED_CONF": "off"}
    result = herd("apply", "--yes", str(fleet_file), env=env)
    assert result.returncode == 0, result.stderr
    assert (dropin.read_bytes() if dropin.exists() else None) == before
    if os.geteuid() == 0 and Path("/etc/systemd/system").is_dir():
        assert "is not /var/lib/herd" in result.stderr
