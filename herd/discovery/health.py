"""Node health as frozen values, and the pure transition from one poll to the next.

The poller (herd.discovery.static) does the I/O; this module decides what a
poll result means: a node is up after one good poll, down after
`DOWN_AFTER` failed polls in a row or at once when the proxy saw a connection
refused, and comes back by itself on the next good poll.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from herd.manifest.model import normalize_model_name

DOWN_AFTER = 2
#: A node that served a request this recently is not marked down by a failed
#: poll: under heavy load the poll itself can time out inside a busy router.
RECENT_OK_S = 1.5


def model_key(name: str) -> str:
    """The name a node's model is known by, for matching against the manifest.

    Models pulled from the herd registry are listed by Ollama as
    `HOST:PORT/library/NAME:TAG`; they are the same model as `NAME:TAG`.
    """
    name = name.strip().lower()
    if "/library/" in name:
        name = name.split("/library/", 1)[1]
    return normalize_model_name(name)


@dataclass(frozen=True)
class PollResult:
    """What one poll of a node returned (None fields: that call failed)."""

    ok: bool
    version: str | None = None
    tags: tuple[Mapping[str, Any], ...] = ()
    ps: tuple[Mapping[str, Any], ...] = ()
    error: str | None = None
    latency_ms: float | None = None


@dataclass(frozen=True)
class NodeHealth:
    """The last known state of one node."""

    name: str
    url: str
    #: True up, False down, None never polled.
    up: bool | None = None
    version: str | None = None
    #: Model keys (see `model_key`) on disk and loaded in memory.
    on_disk: frozenset[str] = frozenset()
    loaded: frozenset[str] = frozenset()
    #: The node's /api/tags entries by model key (size, digest, details...).
    details: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    ps: tuple[Mapping[str, Any], ...] = ()
    failures: int = 0
    last_ok: float | None = None
    last_poll: float | None = None
    last_error: str | None = None
    poll_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "state": {True: "up", False: "down", None: "unknown"}[self.up],
            "version": self.version,
            "models_on_disk": sorted(self.on_disk),
            "models_loaded": sorted(self.loaded),
            "failures": self.failures,
            "last_ok": self.last_ok,
            "last_poll": self.last_poll,
            "last_error": self.last_error,
            "poll_ms": self.poll_ms,
        }


def health_doc(health: NodeHealth) -> dict[str, Any]:
    """`health` as plain JSON values (what one worker's poll tells the others)."""
    return {
        "name": health.name,
        "url": health.url,
        "up": health.up,
        "version": health.version,
        "on_disk": sorted(health.on_disk),
        "loaded": sorted(health.loaded),
        "details": dict(health.details),
        "ps": list(health.ps),
        "failures": health.failures,
        "last_ok": health.last_ok,
        "last_poll": health.last_poll,
        "last_error": health.last_error,
        "poll_ms": health.poll_ms,
    }


def health_from_doc(doc: Mapping[str, Any]) -> NodeHealth:
    """The inverse of `health_doc`."""
    return NodeHealth(
        name=doc["name"],
        url=doc["url"],
        up=doc["up"],
        version=doc["version"],
        on_disk=frozenset(doc["on_disk"]),
        loaded=frozenset(doc["loaded"]),
        details=MappingProxyType(dict(doc["details"])),
        ps=tuple(doc["ps"]),
        failures=doc["failures"],
        last_ok=doc["last_ok"],
        last_poll=doc["last_poll"],
        last_error=doc["last_error"],
        poll_ms=doc["poll_ms"],
    )


def _keys(entries: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for entry in entries:
        name = entry.get("model") or entry.get("name")
        if isinstance(name, str) and name:
            out[model_key(name)] = entry
    return out


def observe(
    prev: NodeHealth, result: PollResult, now: float, served_at: float | None = None
) -> NodeHealth:
    """The node's health after one poll (`served_at`: its last good answer)."""
    if result.ok:
        tags = _keys(result.tags)
        return replace(
            prev,
            up=True,
            version=result.version or prev.version,
            on_disk=frozenset(tags),
            loaded=frozenset(_keys(result.ps)),
            details=MappingProxyType(tags),
            ps=tuple(result.ps),
            failures=0,
            last_ok=now,
            last_poll=now,
            last_error=None,
            poll_ms=result.latency_ms,
        )
    if prev.up and served_at is not None and now - served_at < RECENT_OK_S:
        return replace(prev, last_poll=now, last_error=result.error)
    failures = prev.failures + 1
    return replace(
        prev,
        up=False if failures >= DOWN_AFTER else prev.up,
        failures=failures,
        last_poll=now,
        last_error=result.error,
        loaded=frozenset() if failures >= DOWN_AFTER else prev.loaded,
    )


def connection_refused(prev: NodeHealth, error: str, now: float) -> NodeHealth:
    """The proxy could not connect at all: down now, not after the next poll."""
    return replace(
        prev,
        up=False,
        failures=max(prev.failures, DOWN_AFTER),
        last_poll=now,
        last_error=error,
        loaded=frozenset(),
    )
