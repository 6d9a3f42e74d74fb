"""Host names without DNS: /etc/hosts parsed by herd, names elsewhere refused.

(The namespace test in test_egress.py proves no packet leaves; these pin the
rules: which names are accepted, what address is used, what the refusal says.)
"""

from __future__ import annotations

import yaml

from herd import hosts
from herd.manifest.semantics import check
from tests.router.routerproc import manifest

HOSTS = """\
127.0.0.1 localhost   # loopback
::1       localhost ip6-localhost
10.20.1.11  gpu-a.site gpu-a
bogus-address  broken
# 10.20.1.12 gpu-b
"""


def test_parse_hosts_keeps_file_order_and_skips_junk():
    table = hosts.parse_hosts(HOSTS)
    assert table["localhost"] == ("127.0.0.1", "::1")
    assert table["gpu-a"] == ("10.20.1.11",) == table["gpu-a.site"]
    assert "broken" not in table and "gpu-b" not in table


def test_lookup_reads_the_file_and_never_resolves(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(HOSTS)
    assert hosts.lookup("GPU-A.site.", path) == "10.20.1.11"
    assert hosts.lookup("10.0.0.7", path) == "10.0.0.7"
    assert hosts.lookup("[::1]", path) == "::1"
    assert hosts.lookup("example.com", path) is None  # would need DNS: refused
    path.write_text(HOSTS + "10.20.1.12 gpu-b\n")  # edited: read again
    assert hosts.lookup("gpu-b", path) == "10.20.1.12"


def _doc(url: str, networks: list[str] | None = None) -> dict:
    node = type("N", (), {"name": "n1", "url": url})
    doc = yaml.safe_load(manifest([node]))
    if networks is None:
        del doc["router"]["node_networks"]
    else:
        doc["router"]["node_networks"] = networks
    return doc


def table(name: str) -> str | None:
    return {"gpu-a": "10.20.1.11"}.get(name) or hosts.literal(name)


def test_a_node_name_not_in_etc_hosts_is_refused_even_without_node_networks():
    findings = check(_doc("http://gpu-z.lan:11434"), table)
    assert [(p, m) for p, m in findings if p == ("nodes", 0, "url")] == [
        (("nodes", 0, "url"), hosts.unresolvable("gpu-z.lan"))
    ]
    assert "/etc/hosts" in findings[0][1] and "DNS" in findings[0][1]


def test_a_node_name_in_etc_hosts_is_checked_by_its_address():
    assert check(_doc("http://gpu-a:11434", ["10.20.1.0/24"]), table) == []
    findings = check(_doc("http://gpu-a:11434", ["10.30.0.0/16"]), table)
    assert findings and "gpu-a (10.20.1.11) is outside" in findings[0][1]


def test_validate_refuses_an_unlisted_name_in_one_line(herd, tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(_doc("http://gpu-z.herd-test.invalid:11434")))
    out = herd("validate", str(path))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "nodes[0].url" in out.stderr
    assert "/etc/hosts" in out.stderr


def test_status_refuses_a_router_name_not_in_etc_hosts(herd, state_dir):
    from tests.router.routerproc import apply

    node = type("N", (), {"name": "n1", "url": "http://127.0.0.1:9"})
    apply(state_dir, manifest([node], listen="127.0.0.1:9"))
    out = herd("status", "--router", "http://router.herd-test.invalid:11435")
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "/etc/hosts" in out.stderr
