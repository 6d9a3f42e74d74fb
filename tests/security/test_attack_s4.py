"""Regression tests from the session-4 security review: DNS rebinding (the Host
header) and fleet node names shown to client groups without `operator`.

Real `herd serve` (gunicorn + gevent) in front of a real `herd sim` node;
requests go out over raw sockets so each test chooses the Host header bytes.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from herd.errors import ConfigError
from herd.manifest import load_bytes
from herd.reconcile.commands import registry_address
from herd.router.hostnames import KnownHosts, always_known
from tests.router.routerproc import apply, manifest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HELLO = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}


def call(
    url: str,
    method: str,
    path: str,
    host: str | None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], Any]:
    """One HTTP/1.0 exchange over a raw socket: HTTP/1.0 so that a request
    without Host is well-formed too."""
    port = int(url.rsplit(":", 1)[1])
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.0\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    if data:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    with socket.create_connection(
        ("127.0.0.1", port), timeout=30, source_address=(source, 0)
    ) as sock:
        sock.sendall(head.encode() + b"\r\n" + data)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    top, _, payload = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = payload
    return status, fields, parsed


@pytest.fixture
def served(sims, router):
    node = sims("node-a")
    text = manifest([node])
    doc = yaml.safe_load(text)
    doc["router"]["hostnames"] = ["Router.Test.Lan."]
    r = router(yaml.safe_dump(doc, sort_keys=False))
    r.wait_nodes_up(1)
    return r


# -- DNS rebinding -------------------------------------------------------------


def test_rebound_name_is_refused_in_each_api_shape(served):
    evil = "evil.example:11435"
    status, fields, body = call(served.url, "GET", "/api/tags", evil)
    assert status == 421 and fields["content-type"].startswith("application/json")
    assert "evil.example" in body["error"] and "router.hostnames" in body["error"]
    status, _, body = call(served.url, "GET", "/v1/models", evil)
    assert status == 421
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "misdirected_request"
    status, _, body = call(served.url, "GET", "/v2/", evil)
    assert status == 421 and body["errors"][0]["message"]
    status, _, body = call(served.url, "POST", "/api/chat", evil, HELLO)
    assert status == 421 and "error" in body
    # Before admission and before any other answer: even the probes refuse it.
    assert call(served.url, "GET", "/healthz", "evil.example")[0] == 421
    assert call(served.url, "GET", "/fleet/status", "localhost.evil.example")[0] == 421


#: Host values a client, a node or a proxy uses ({port}: the router's).
ANSWERED = (
    None,  # HTTP/1.0 without Host: no browser sends that
    "127.0.0.1",
    "127.0.0.1:{port}",
    "[::1]:{port}",
    "10.9.8.7:{port}",  # any address literal: an address cannot be rebound
    "localhost:{port}",
    "LOCALHOST",
    "router.test.lan:{port}",  # router.hostnames, any case, final dot or not
    "ROUTER.test.lan.",
    *always_known(),  # this machine's own name and its mDNS name
)


def test_addresses_and_known_names_are_answered(served):
    port = served.url.rsplit(":", 1)[1]
    for host in ANSWERED:
        value = host.format(port=port) if host else None
        status, _, body = call(served.url, "POST", "/api/chat", value, HELLO)
        assert status == 200, (host, body)


def test_hostnames_follow_a_reload(sims, router):
    node = sims("node-a")
    r = router(manifest([node]))
    r.wait_nodes_up(1)
    assert call(r.url, "GET", "/api/tags", "router.test.lan")[0] == 421
    doc = yaml.safe_load(manifest([node]))
    doc["router"]["hostnames"] = ["router.test.lan"]
    apply(r.state_dir, yaml.safe_dump(doc, sort_keys=False))
    deadline = time.monotonic() + 30
    while r.get("/fleet/status")[1]["revision"] != 2:
        assert time.monotonic() < deadline, "the router never loaded revision 2"
        time.sleep(0.1)
    assert call(r.url, "GET", "/api/tags", "router.test.lan")[0] == 200


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("1.2.3.4", True),
        ("1.2.3.4:80", True),
        ("[fe80::1]:8080", True),
        ("[1.2.3.4]", False),  # brackets hold IPv6 only
        ("::1", False),  # IPv6 without brackets is no Host
        ("[::1", False),
        ("[::1]x", False),
        ("localhost:http", False),
        ("localhost:", True),
        ("0x7f.1", False),  # not an address: a name, and not a known one
        ("evil.example", False),
        ("rtr.lan", True),
        ("rtr.lan.", True),
        ("", True),
    ],
)
def test_host_values(host, allowed):
    assert KnownHosts(["rtr.lan", "localhost"]).allows(host) is allowed


def test_manifest_refuses_a_malformed_hostname(tmp_path):
    doc = yaml.safe_load((ROOT / "etc" / "demo.yaml").read_text())
    for bad in ("bad name", "http://router", "router:11435", "-x.lan"):
        doc["router"]["hostnames"] = [bad]
        with pytest.raises(Exception, match="hostnames"):
            load_bytes(yaml.safe_dump(doc).encode(), str(tmp_path / "f.yaml"))


def test_apply_refuses_a_registry_name_the_router_refuses(tmp_path):
    doc = yaml.safe_load((ROOT / "etc" / "demo.yaml").read_text())
    fleet = load_bytes(yaml.safe_dump(doc).encode(), str(tmp_path / "f.yaml"))
    with pytest.raises(ConfigError, match="router.hostnames"):
        registry_address(fleet, "llm.site.lan:11435")
    assert registry_address(fleet, "10.20.0.1:11435") == "10.20.0.1:11435"
    doc["router"]["hostnames"] = ["llm.site.lan"]
    fleet = load_bytes(yaml.safe_dump(doc).encode(), str(tmp_path / "f.yaml"))
    assert registry_address(fleet, "llm.site.lan:11435") == "llm.site.lan:11435"


# -- node names ----------------------------------------------------------------

OPERATOR, PLAIN = "127.0.0.1", "127.0.0.2"


def test_node_names_only_for_operators(sims, router):
    a, b = sims("node-a"), sims("node-b")
    clients = [
        {"name": "ops", "networks": ["127.0.0.1/32"], "operator": True},
        {"name": "apps", "networks": ["127.0.0.2/32"]},
    ]
    r = router(manifest([a, b], clients=clients))
    r.wait_nodes_up(2)
    for node in (a, b):  # the model loaded on both nodes
        status, _, _ = call(
            node.url,
            "POST",
            "/api/chat",
            "x",
            {**HELLO, "model": "llama3.2:3b", "stream": False},
        )
        assert status == 200
    deadline = time.monotonic() + 30
    while len(call(r.url, "GET", "/api/ps", "localhost")[2]["models"]) < 2:
        assert time.monotonic() < deadline, "the router never saw both loaded"
        time.sleep(0.2)

    explain = {"X-Herd-Explain": "1"}
    chat = {**HELLO, "stream": False}
    for path, body in (
        ("/api/chat", chat),
        ("/api/chat", {**HELLO, "stream": True}),
        ("/v1/chat/completions", chat),
        ("/api/embed", {"model": "nomic-embed-text", "input": "x"}),
    ):
        status, fields, _ = call(r.url, "POST", path, None, body, explain, PLAIN)
        assert status == 200 and fields["x-herd-model"], (path, fields)
        assert "x-herd-node" not in fields and "x-herd-decision" not in fields, path
        status, fields, _ = call(r.url, "POST", path, None, body, explain, OPERATOR)
        assert status == 200 and fields["x-herd-node"] in ("node-a", "node-b")
        assert "node-" in fields["x-herd-decision"]

    _, _, ps = call(r.url, "GET", "/api/ps", None, source=PLAIN)
    assert [m["name"] for m in ps["models"]] == ["llama3.2:3b"]
    assert "node-" not in json.dumps(ps)
    _, _, ps = call(r.url, "GET", "/api/ps", None, source=OPERATOR)
    assert sorted(m["node"] for m in ps["models"]) == ["node-a", "node-b"]
