"""The plan: what applying a manifest would change, as a pure diff of two fleets.

`diff(old, new)` compares the applied fleet (None before the first apply) with a
new one and lists every added, changed and removed node, model, placement and
client group, plus changed settings sections. Ordering is deterministic (by
kind, then name), so the table and the JSON are stable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from herd.manifest.model import Fleet, Router

ADD, CHANGE, REMOVE = "add", "change", "remove"
#: Row order in the table: what things are, then where they run, then settings.
KINDS = (
    "node",
    "model",
    "placement",
    "client",
    "router",
    "discovery",
    "bundles",
    "audit",
    "metadata",
)
_SYMBOL = {ADD: "+", CHANGE: "~", REMOVE: "-"}


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str
    #: field → (old, new), plain JSON values; empty for add/remove.
    fields: Mapping[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "fields": {k: {"old": o, "new": n} for k, (o, n) in self.fields.items()},
        }


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        """One line: `+1 node, ~2 models, -1 placement` or `no changes`."""
        if self.empty:
            return "no changes"
        parts = []
        for kind in KINDS:
            for action in (ADD, CHANGE, REMOVE):
                n = sum(
                    1 for c in self.changes if c.kind == kind and c.action == action
                )
                if n:
                    noun = (
                        kind
                        if n == 1
                        or kind
                        in ("router", "bundles", "audit", "discovery", "metadata")
                        else kind + "s"
                    )
                    parts.append(f"{_SYMBOL[action]}{n} {noun}")
        return ", ".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "changes": [c.as_json() for c in self.changes],
        }

    def table(self) -> str:
        """A readable, aligned table for the terminal."""
        if self.empty:
            return "No changes: the manifest matches the applied revision."
        rows = [("", "KIND", "NAME", "DETAIL")]
        for c in self.changes:
            rows.append((_SYMBOL[c.action], c.kind, c.name, _detail(c)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            f"{r[0]:<{widths[0]}} {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
            f"{r[3]}".rstrip()
            for r in rows
        ]
        return "\n".join(lines) + f"\n\nPlan: {self.summary()}."


def _detail(change: Change) -> str:
    if change.action == ADD:
        return "new"
    if change.action == REMOVE:
        return "removed"
    return "; ".join(
        f"{k}: {_short(o)} → {_short(n)}" for k, (o, n) in change.fields.items()
    )


def _short(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return "[" + ", ".join(map(_short, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def plain(value: Any) -> Any:
    """Frozen model values → JSON values (networks as strings, tuples as lists)."""
    if dataclasses.is_dataclass(value):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in sorted(value.items())}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


def _field_changes(old: Any, new: Any, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    a, b = plain(old), plain(new)
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return {} if a == b else {"value": (a, b)}
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if k not in skip and a.get(k) != b.get(k)
    }


def _named(
    kind: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    skip: tuple[str, ...] = (),
) -> Iterator[Change]:
    for name in sorted(set(old) | set(new)):
        if name not in old:
            yield Change(kind, name, ADD)
        elif name not in new:
            yield Change(kind, name, REMOVE)
        else:
            fields = _field_changes(old[name], new[name], skip)
            if fields:
                yield Change(kind, name, CHANGE, fields)


def _placements(fleet: Fleet | None) -> dict[str, Any]:
    """`model @ node` for every placement the fleet implies (labels resolved).

    A model with `replicas` fewer than its matching nodes is one row, `model @
    N of SELECTOR`: which N nodes is decided against the live fleet (see
    herd.reconcile.placement) and shown in the plan's node section.
    """
    if fleet is None:
        return {}
    rows: dict[str, Any] = {}
    for model in fleet.models:
        nodes = fleet.nodes_for(model)
        wanted = model.place.replicas
        if wanted is not None and wanted < len(nodes):
            selector = ",".join(
                f"{k}={v}" for k, v in sorted(model.place.labels.items())
            )
            among = selector or ",".join(model.place.nodes)
            rows[f"{model.name} @ {wanted} of {among}"] = model.name
            continue
        for node in nodes:
            rows[f"{model.name} @ {node.name}"] = model.name
    return rows


def diff(old: Fleet | None, new: Fleet) -> Plan:
    """Everything that applying `new` over `old` changes, deterministically ordered."""
    base = old or Fleet(name=new.name, router=Router(), nodes=(), models=())
    changes: list[Change] = []
    changes += _named(
        "node", {n.name: n for n in base.nodes}, {n.name: n for n in new.nodes}
    )
    changes += _named(
        "model",
        {m.name: m for m in base.models},
        {m.name: m for m in new.models},
        skip=("place",),  # placement changes show as placement rows
    )
    changes += _named("placement", _placements(old), _placements(new))
    changes += _named(
        "client",
        {c.name: c for c in base.router.clients},
        {c.name: c for c in new.router.clients},
    )
    if old is not None:
        for kind, a, b, skip in (
            ("router", old.router, new.router, ("clients",)),
            ("discovery", old.discovery, new.discovery, ()),
            ("bundles", old.bundles, new.bundles, ()),
            ("audit", old.audit, new.audit, ()),
        ):
            fields = _field_changes(a, b, skip)
            if fields:
                changes.append(Change(kind, kind, CHANGE, fields))
        meta = _field_changes(
            {"name": old.name, "description": old.description},
            {"name": new.name, "description": new.description},
        )
        if meta:
            changes.append(Change("metadata", "metadata", CHANGE, meta))
    order = {k: i for i, k in enumerate(KINDS)}
    changes.sort(key=lambda c: (order[c.kind], c.name))
    return Plan(tuple(changes))
