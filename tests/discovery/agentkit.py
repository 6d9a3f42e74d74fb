"""Helpers for discovery tests: fleet keys, signed heartbeats, manifests."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from herd.discovery import fleetkey
from tests.router.routerproc import Sim


def make_key(directory: Path, name: str = "fleet.key") -> fleetkey.FleetKey:
    key = fleetkey.generate()
    fleetkey.write(directory / name, key)
    return key


def discovery_manifest(
    static: list[Sim],
    key_path: Path,
    *,
    networks: list[str] | None = None,
    timeout_s: float = 15,
    overrides: dict[str, Any] | None = None,
    listen: str = "127.0.0.1:11435",
    mdns: dict[str, Any] | None = None,
) -> str:
    """Static nodes plus agents: `qwen3:0.6b` is placed on label pool=agents,
    which only discovered nodes carry (mdns.defaults)."""
    names = [s.name for s in static]
    doc = {
        "apiVersion": "herd/v1",
        "kind": "Fleet",
        "metadata": {"name": "discovery-test"},
        "router": {
            "listen": listen,
            "node_networks": ["127.0.0.0/8", "10.0.0.0/8"],
            "clients": [
                {
                    "name": "local",
                    "networks": ["127.0.0.0/8", "10.0.0.0/8"],
                    "operator": True,
                }
            ],
            "limits": {"connect_timeout_s": 1, "first_byte_timeout_s": 5},
        },
        "nodes": [
            {"name": s.name, "url": s.url, "labels": {"pool": "static"}} for s in static
        ],
        "discovery": {
            "node_keys": str(key_path),
            "heartbeat_timeout_s": timeout_s,
            "mdns": {
                "enabled": False,
                "networks": networks or ["127.0.0.0/8"],
                "defaults": {"labels": {"pool": "agents"}, "max_concurrency": 3},
                "nodes": overrides or {},
                **(mdns or {}),
            },
        },
        "models": [
            {"name": "llama3.2:3b", "place": {"nodes": names}},
            {"name": "qwen3:0.6b", "place": {"labels": {"pool": "agents"}}},
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def sim_models(sim: Sim) -> dict[str, Any]:
    out = {}
    for path, key in (("/api/tags", "models"), ("/api/ps", "loaded")):
        conn = http.client.HTTPConnection(*_hostport(sim.url), timeout=5)
        conn.request("GET", path)
        out[key] = json.loads(conn.getresponse().read())["models"]
        conn.close()
    return out


def body(name: str, url: str, **extra: Any) -> bytes:
    doc = {"name": name, "url": url, "interval_s": 1, **extra}
    return json.dumps(doc).encode()


def post(
    router_url: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> tuple[int, Any]:
    """POST /fleet/heartbeat, optionally from another loopback source address."""
    conn = http.client.HTTPConnection(
        *_hostport(router_url),
        timeout=5,
        source_address=(source, 0) if source else None,
    )
    try:
        conn.request(
            "POST",
            "/fleet/heartbeat",
            body=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        reply = conn.getresponse()
        raw = reply.read()
        try:
            return reply.status, json.loads(raw)
        except ValueError:
            return reply.status, raw
    finally:
        conn.close()


def beat(
    router_url: str,
    key: fleetkey.FleetKey,
    data: bytes,
    source: str | None = None,
    now: float | None = None,
) -> tuple[int, Any]:
    headers = fleetkey.sign(key, data, time.time() if now is None else now)
    return post(router_url, data, headers, source)


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port
