"""`router.ha`: validation, keepalived.conf, peer routers in status and health."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from herd.errors import ManifestError
from herd.health import checks
from herd.health.snapshot import Snapshot
from herd.manifest import keepalived, load_bytes
from herd.router import hapeers

ROOT = Path(__file__).resolve().parents[2]
HA = {
    "virtual_address": "10.20.0.10",
    "interface": "eth0",
    "peers": ["10.20.0.11", "10.20.0.12"],
    "priority": 150,
    "auth_secret_file": "/etc/herd/vrrp.secret",
}


def fleet_doc(**ha) -> dict:
    doc = yaml.safe_load((ROOT / "etc" / "fleet.yaml").read_text())
    doc["router"]["ha"] = {**copy.deepcopy(HA), **ha}
    return doc


def load(doc: dict):
    return load_bytes(yaml.safe_dump(doc).encode(), "fleet.yaml", str(ROOT / "etc"))


def problems(doc: dict) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load(doc)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def test_a_valid_pair_loads():
    ha = load(fleet_doc()).router.ha
    assert ha.peers == ("10.20.0.11", "10.20.0.12")
    assert (ha.priority_of("10.20.0.11"), ha.priority_of("10.20.0.12")) == (150, 140)
    assert ha.virtual_router_id == 51


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"virtual_address": "192.168.9.9"}, "outside every client network"),
        ({"peers": ["10.20.0.11", "10.20.0.10"]}, "is the virtual address"),
        ({"peers": ["10.20.0.11", "router-b"]}, "router.ha.peers[1]"),
        ({"peers": ["10.20.0.11", "10.20.0.300"]}, "not an IPv4 address"),
        ({"peers": ["10.20.0.11"]}, "router.ha.peers"),
        ({"priority": 255}, "router.ha.priority"),
        ({"priority": 5}, "the last would get -5"),
        ({"auth_secret_file": "vrrp.secret"}, "router.ha.auth_secret_file"),
        ({"auth_pass": "inline"}, "auth_pass"),
        ({"interface": "eth0; rm -rf /"}, "router.ha.interface"),
        # `$` in a schema pattern ends the text (ECMA-262), not a line.
        ({"interface": "eth0\n"}, "router.ha.interface"),
        ({"virtual_address": "fd00::10"}, "fd00::10 is an IPv6 address"),
        ({"peers": ["10.20.0.11", "fd00::12"]}, "router.ha moves an IPv4 address"),
        ({"virtual_router_id": 0}, "router.ha.virtual_router_id"),
    ],
)
def test_bad_ha_is_refused_naming_the_field(change, expected):
    found = problems(fleet_doc(**change))
    assert any(expected in p for p in found), found


def test_a_router_bound_to_one_address_cannot_take_the_virtual_one():
    doc = fleet_doc()
    doc["router"]["listen"] = "10.20.0.11:11435"
    assert any("router.listen" in p for p in problems(doc))


def test_config_names_this_router_and_passes_keepalived_config_test(tmp_path):
    fleet = load(fleet_doc())
    text = keepalived.config_text(fleet, "10.20.0.12", "s3cr3t", 7)
    assert "unicast_src_ip 10.20.0.12" in text
    assert "unicast_peer {\n        10.20.0.11\n    }" in text
    assert "priority 140" in text and "auth_pass s3cr3t" in text
    assert "10.20.0.10/32 dev eth0" in text
    assert "http://127.0.0.1:11435/readyz" in text and "--max-time 1" in text
    if shutil.which("keepalived") is None:
        pytest.skip("keepalived is not installed: config test not run")
    conf = tmp_path / "keepalived.conf"
    keepalived.write_conf(conf, text)  # runs `keepalived -t -f` before the rename
    assert conf.read_text() == text and conf.stat().st_mode & 0o777 == 0o600


def test_write_refuses_a_foreign_file_and_a_rejected_config(tmp_path):
    fleet = load(fleet_doc())
    conf = tmp_path / "keepalived.conf"
    conf.write_text("vrrp_instance hand_made {}\n")
    with pytest.raises(keepalived.HaError, match="not written by herd"):
        keepalived.write_conf(conf, keepalived.config_text(fleet, "10.20.0.11", "x", 1))
    assert conf.read_text() == "vrrp_instance hand_made {}\n"
    if shutil.which("keepalived") is None:
        pytest.skip("keepalived is not installed")
    conf.unlink()
    with pytest.raises(keepalived.HaError, match="keepalived -t rejected"):
        keepalived.write_conf(conf, keepalived.HEADER + "\nvrrp_instance x {\n")
    assert not conf.exists() and not list(tmp_path.glob(".herd-*"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("interface", "eth0\n}\nvrrp_script evil {"), ("interface", "eth0 #"),
     ("virtual_address", "10.20.0.10\n"), ("virtual_address", "fd00::10"),
     ("peers", ("10.20.0.11", "10.20.0.12 }"))],
)  # fmt: skip
def test_the_writer_refuses_a_value_that_would_leave_its_line(field, value):
    """Even a model that bypassed validation cannot write a second statement."""
    fleet = load(fleet_doc())
    ha = dataclasses.replace(fleet.router.ha, **{field: value})
    fleet = dataclasses.replace(fleet, router=dataclasses.replace(fleet.router, ha=ha))
    with pytest.raises(keepalived.HaError, match=field):
        keepalived.config_text(fleet, "10.20.0.11", "s3cr3t", 1)


@pytest.mark.parametrize(
    ("content", "ok"),
    [("herdvrrp\n", True), ("", False), ("toolongpassword", False), ("a b", False),
     ("ab#c", False)],
)  # fmt: skip
def test_secret_file_rules(tmp_path, content, ok):
    path = tmp_path / "secret"
    path.write_text(content)
    if ok:
        assert keepalived.read_secret(str(path)) == content.strip()
    else:
        with pytest.raises(keepalived.HaError, match="auth_secret_file"):
            keepalived.read_secret(str(path))


def test_peer_states_report_a_mismatch_and_silence():
    fleet = load(fleet_doc(peers=["10.20.0.11", "10.20.0.12", "10.20.0.13"]))
    answers = {
        "http://10.20.0.11:11435": {"revision": 3, "sha256": "a" * 64},
        "http://10.20.0.12:11435": {"revision": 4, "sha256": "b" * 64},
    }
    states = hapeers.peer_states(fleet, None, lambda url, token: answers.get(url))
    text = "\n".join(hapeers.lines(states, "a" * 64))
    assert "10.20.0.11: revision 3" in text and "same manifest" in text
    assert "10.20.0.12: MISMATCH" in text
    assert "10.20.0.13: did not answer" in text
    found = checks.ha_peer(
        Snapshot(
            source="router",
            fleet="f",
            sha256_served="a" * 64,
            ha_peers=tuple((s.address, s.sha256) for s in states),
        )
    )
    assert [f.severity for f in found] == ["critical", "warning"]
    assert "10.20.0.12 serves another manifest" in found[0].finding
    assert not checks.ha_peer(Snapshot(source="router", fleet="f"))  # no router.ha


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.20.0.0
        /24 link UNICAST
     |-- 10.20.0.12
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.20.0.12
        /32 host LOCAL
     |-- 10.20.0.255
        /32 link BROADCAST
"""


def test_a_router_finds_itself_in_the_kernels_local_table():
    ha = load(fleet_doc()).router.ha
    assert keepalived.own_address(ha, FIB_TRIE) == "10.20.0.12"
    assert keepalived.own_address(ha, FIB_TRIE.replace("0.12", "0.99")) is None


def test_keepalived_default_is_for_the_system_state_dir_only(monkeypatch):
    """As root, keepalived.conf is written by default only for an apply into
    the system state dir: a scratch or demo apply leaves the host's alone."""
    monkeypatch.delenv("HERD_KEEPALIVED_CONF", raising=False)
    monkeypatch.setattr(keepalived.os, "geteuid", lambda: 0)
    assert keepalived.conf_path(state_dir="/var/lib/herd") == keepalived.DEFAULT_CONF
    assert keepalived.conf_path() == keepalived.DEFAULT_CONF
    assert keepalived.conf_path(state_dir="/tmp/demo-state") is None
    monkeypatch.setenv("HERD_KEEPALIVED_CONF", "/srv/k.conf")
    assert keepalived.conf_path(state_dir="/tmp/demo-state") == Path("/srv/k.conf")
    monkeypatch.setattr(keepalived.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("HERD_KEEPALIVED_CONF")
    assert keepalived.conf_path(state_dir="/var/lib/herd") is None
