"""One admitted agent as the router knows it: its last heartbeat, frozen.

`Member.from_row` reads a row of the shared membership database (written by
any router worker, herd.discovery.membership); `doc_of` is what such a row
stores when the heartbeat's own JSON is not at hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from herd.discovery.heartbeat import Heartbeat


@dataclass(frozen=True)
class Member:
    """One admitted agent, as of its last heartbeat."""

    name: str
    url: str
    address: str
    #: The static node this agent reports for (metrics merged), else None.
    static_name: str | None
    via: str
    first_seen: float
    last_seen: float
    seq: int
    interval_s: float = 5.0
    version: str | None = None
    ollama_error: str | None = None
    models: tuple[Mapping[str, Any], ...] = ()
    loaded: tuple[Mapping[str, Any], ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: The agent's digest of version, models and loaded (None: it sends none).
    inventory: str | None = None
    #: The JSON text of the last heartbeat that carried the whole inventory
    #: (a row for a later beat that left it out is built from it, see `row_doc`).
    source: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_row(cls, row: tuple) -> Member:
        name, address, url, static_name, via, first, last, seq, doc = row
        body = json.loads(doc)
        source = None
        if "whole" in body and "beat" in body:  # see `row_doc`
            whole, beat = body["whole"], body["beat"]
            body = {**whole, **beat}
            source = json.dumps(whole)
        return cls(
            name=name,
            url=url,
            address=address,
            static_name=static_name,
            via=via or "agent",
            first_seen=first,
            last_seen=last,
            seq=seq,
            interval_s=body.get("interval_s", 5.0),
            version=body.get("version"),
            ollama_error=body.get("ollama_error"),
            models=tuple(body.get("models") or ()),
            loaded=tuple(body.get("loaded") or ()),
            metrics=MappingProxyType(body.get("metrics") or {}),
            inventory=body.get("inventory"),
            source=source if source is not None else doc,
        )


def doc_of(hb: Heartbeat, whole: Heartbeat | Member | None = None) -> dict[str, Any]:
    """What a row stores for `hb` when its JSON is not at hand; the version and
    models are those of `whole` (for a partial `hb`, the member holding them)."""
    whole = hb if whole is None else whole
    return {
        "interval_s": hb.interval_s,
        "version": whole.version,
        "ollama_error": whole.ollama_error,
        "models": list(whole.models),
        "loaded": list(whole.loaded),
        "metrics": dict(hb.metrics),
        "inventory": hb.inventory,
    }


def row_doc(raw: str, source: str | None) -> str:
    """What a member row stores for a heartbeat whose JSON text is `raw`: the
    text itself, or, when it left the unchanged models out, both it and the
    last whole heartbeat's text `source` (joined as text: nothing is parsed
    or serialized again on the hot path). `Member.from_row` reads both."""
    if source is None:
        return raw
    return '{"whole":' + source + ',"beat":' + raw + "}"


def beat_changes(prev: Member | None, hb: Heartbeat, static_name: str | None) -> bool:
    """Whether `hb` says more than new metrics (then its row is written now)."""
    if prev is None or (prev.url, prev.static_name, prev.inventory) != (
        hb.url,
        static_name,
        hb.inventory,
    ):
        return True
    if hb.inventory is not None:
        return False  # the same digest: the same version and models
    return (prev.version, prev.ollama_error, prev.models, prev.loaded) != (
        hb.version,
        hb.ollama_error,
        hb.models,
        hb.loaded,
    )
