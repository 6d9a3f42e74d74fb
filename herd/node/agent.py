"""`herd node`: the agent on an inference host.

Every `interval` seconds it samples the host (herd.node.metrics), asks the
local Ollama for its version, models on disk and loaded, and sends one signed
heartbeat (herd.discovery.fleetkey) to the router's `/fleet/heartbeat`. On
SIGTERM or SIGINT it sends a goodbye, so the router stops routing to it at
once, and exits. It talks to nothing but the local Ollama, the router, and
(when finding the router by mDNS) the link-local mDNS group.

Runs on gevent without monkey-patching: HTTP through geventhttpclient, the
optional LAN proxy (herd.node.lanproxy) and mDNS as greenlets beside it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from herd.discovery import fleetkey
from herd.errors import HerdError
from herd.hosts import netloc
from herd.node.metrics import HostMetrics

log = logging.getLogger("herd.node")

DEFAULT_OLLAMA = "http://127.0.0.1:11434"
DEFAULT_INTERVAL_S = 5.0
OLLAMA_TIMEOUT_S = 2.0
ROUTER_TIMEOUT_S = 3.0


class AgentError(HerdError):
    """A bad flag or an unusable key: the agent cannot start."""


@dataclass(frozen=True)
class AgentConfig:
    name: str
    ollama: str
    key_path: str
    router: str | None = None
    #: The URL at which the router reaches this node's Ollama (or its LAN proxy).
    advertise: str | None = None
    interval_s: float = DEFAULT_INTERVAL_S
    lan_proxy: str | None = None


def default_name() -> str:
    """This host's name, as a valid node name."""
    name = re.sub(r"[^a-z0-9._-]", "-", socket.gethostname().lower()).strip("-.")
    return (name or "node")[:63]


def http_url(value: str, what: str) -> tuple[str, int]:
    """Host and port of an http:// URL given on the command line."""
    try:
        parts = urlsplit(value)
        port = parts.port or 80
    except ValueError as ex:
        raise AgentError(f"{what}: {value!r} is not a URL: {ex}") from ex
    if parts.scheme != "http" or not parts.hostname:
        raise AgentError(f"{what}: {value!r} must be http://HOST:PORT")
    return parts.hostname, port


def local_address_towards(host: str, port: int) -> str:
    """The local address the kernel would use to reach host:port (UDP connect
    sends nothing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        return sock.getsockname()[0]


def advertised_url(config: AgentConfig, router: str) -> str:
    """Where the router should send requests: --advertise, the LAN proxy, or
    the local Ollama (on the address facing the router when it is loopback)."""
    if config.advertise:
        return config.advertise.rstrip("/")
    if config.lan_proxy:
        host, _, port = config.lan_proxy.rpartition(":")
        return f"http://{netloc(host.strip('[]'), int(port))}"
    host, port = http_url(config.ollama, "--ollama")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        router_host, router_port = http_url(router, "--router")
        if not ipaddress.ip_address(router_host).is_loopback:
            host = local_address_towards(router_host, router_port)
    return f"http://{netloc(host, port)}"


class Http:
    """Tiny JSON-over-HTTP helper on geventhttpclient: one keep-alive
    connection per server (the router, the local Ollama), reused beat after
    beat, with connect and read timeouts on every call.

    A request that fails on a reused connection (the server closed it while
    idle) is not retried here: a heartbeat is signed with a fresh nonce per
    attempt, so the caller retries (`Agent.send`)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, int, float], Any] = {}

    def request(
        self,
        url: str,
        method: str,
        path: str,
        timeout: float,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        host, port = http_url(url, "url")
        key = (host, port, timeout)
        client = self._clients.get(key)
        if client is None:
            from geventhttpclient import HTTPClient

            client = HTTPClient(
                host,
                port,
                connection_timeout=timeout,
                network_timeout=timeout,
                concurrency=1,
            )
            self._clients[key] = client
        try:
            response = client.request(method, path, body=body, headers=headers or {})
            try:
                data = response.read()
                status = response.status_code
            finally:
                response.release()
        except BaseException:
            # A broken connection must not be reused: start afresh next time.
            self._clients.pop(key, None)
            client.close()
            raise
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class Agent:
    """Builds and sends heartbeats; `run()` loops until `stopped()`."""

    def __init__(
        self,
        config: AgentConfig,
        keys: tuple[fleetkey.FleetKey, ...],
        *,
        metrics: HostMetrics | None = None,
        http: Http | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.key = keys[0]
        self.metrics = metrics or HostMetrics()
        self.http = http or Http()
        self.clock = clock
        self.router: str | None = config.router.rstrip("/") if config.router else None
        self.via = "router-flag" if config.router else "mdns"
        self.state: str | None = None  # last thing the router said, for logging
        #: Digest of the inventory the router last took (version, models,
        #: loaded); while it holds, beats leave those out.
        self._taken: str | None = None
        self._inventory: str | None = None

    def ollama_report(self) -> dict[str, Any]:
        """Version, models on disk and loaded, from the local Ollama."""
        report: dict[str, Any] = {"models": [], "loaded": []}
        try:
            for path, key in (("/api/tags", "models"), ("/api/ps", "loaded")):
                status, doc = self.http.request(
                    self.config.ollama, "GET", path, OLLAMA_TIMEOUT_S
                )
                if status != 200 or not isinstance(doc, dict):
                    raise OSError(f"{path} answered {status}")
                report[key] = _model_entries(doc.get("models"))
            status, doc = self.http.request(
                self.config.ollama, "GET", "/api/version", OLLAMA_TIMEOUT_S
            )
            if status == 200 and isinstance(doc, dict):
                report["version"] = str(doc.get("version") or "")[:64] or None
        except Exception as ex:  # noqa: BLE001 - any failure: Ollama is down
            report["ollama_error"] = (str(ex) or type(ex).__name__)[:200]
        return report

    def body(self, goodbye: bool = False) -> bytes:
        assert self.router is not None
        doc: dict[str, Any] = {
            "name": self.config.name,
            "url": advertised_url(self.config, self.router),
            "interval_s": self.config.interval_s,
            "via": self.via,
        }
        self._inventory = None
        if goodbye:
            doc["goodbye"] = True
        else:
            report = self.ollama_report()
            digest = hashlib.sha256(
                json.dumps(report, sort_keys=True, separators=(",", ":")).encode()
            ).hexdigest()[:32]
            doc["inventory"] = self._inventory = digest
            if digest != self._taken:
                doc.update(report)  # else left out: the router holds it already
            doc["metrics"] = self.metrics.sample()
            # The agent's wall clock as it sends: the router's health engine
            # compares it with its own on arrival (clock skew).
            doc["metrics"]["clock"] = round(self.clock(), 3)
        return json.dumps(doc, separators=(",", ":")).encode()

    def send(self, goodbye: bool = False) -> tuple[int, Any]:
        """One signed heartbeat (or goodbye); logs when the router's answer
        changes. Sends everything again when the router asks (`resend`)."""
        status, doc = self._send(goodbye)
        if status == 200 and isinstance(doc, dict) and doc.get("resend"):
            status, doc = self._send(goodbye)  # (`_taken` was reset: all of it)
        return status, doc

    def _send(self, goodbye: bool) -> tuple[int, Any]:
        assert self.router is not None
        body = self.body(goodbye)
        headers = fleetkey.sign(self.key, body, self.clock())
        try:
            status, doc = self._post(body, headers)
        except Exception:  # noqa: BLE001 - the kept-alive connection went stale
            # Once more on a new connection, signed anew (a nonce is single-use).
            try:
                status, doc = self._post(
                    body, fleetkey.sign(self.key, body, self.clock())
                )
            except Exception as ex:  # noqa: BLE001 - the router may be restarting
                status, doc = 0, {"error": f"router unreachable: {ex}"}
        admitted = status == 200 and isinstance(doc, dict) and doc.get("admitted")
        self._taken = self._inventory if admitted else None
        said = (doc or {}).get("reason") or (doc or {}).get("error") or str(status)
        if said != self.state:
            self.state = said
            level = logging.INFO if status == 200 else logging.WARNING
            log.log(level, "router %s: %s %s", self.router, status, said)
        return status, doc

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        assert self.router is not None
        headers["Content-Type"] = "application/json"
        return self.http.request(
            self.router,
            "POST",
            "/fleet/heartbeat",
            ROUTER_TIMEOUT_S,
            body=body,
            headers=headers,
        )

    def run(self, stopped: Callable[[], bool], sleep: Callable[[float], Any]) -> None:
        """Heartbeat every interval until `stopped()`, then say goodbye."""
        while not stopped():
            began = time.monotonic()
            if self.router is not None:
                self.send()
            remaining = self.config.interval_s - (time.monotonic() - began)
            sleep(max(0.05, remaining))
        if self.router is not None:
            status, _ = self.send(goodbye=True)
            log.info("goodbye sent to %s (%s)", self.router, status)
        self.http.close()


def _model_entries(models: Any) -> list[dict[str, Any]]:
    """The fields of /api/tags and /api/ps entries the router uses (no more)."""
    keep = ("name", "model", "size", "size_vram", "digest", "expires_at")
    out = []
    for entry in models or ():
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            item = {k: entry[k] for k in keep if k in entry}
            details = entry.get("details")
            if isinstance(details, dict):
                item["details"] = {
                    k: details[k]
                    for k in ("parameter_size", "quantization_level", "family")
                    if k in details
                }
            out.append(item)
    return out
