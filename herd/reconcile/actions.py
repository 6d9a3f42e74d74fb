"""The fleet plan: per node, what to pull, what is there, what to prune and warm.

Pure: built from the fleet, the live inventory and the bundle catalog. A model
that names a bundle must come from that imported bundle (else a plan error
naming it); a model with no bundle must already be on its nodes (else the
plan says it cannot be satisfied). Models on a node that the manifest does
not place there are left alone, and listed for deletion only with `prune`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from herd.manifest.model import Fleet
from herd.reconcile.inventory import NodeInventory
from herd.reconcile.placement import placements


@dataclass(frozen=True)
class Imported:
    """A model the bundle catalog holds: which bundle, how many bytes."""

    name: str
    bundle: str
    size: int


@dataclass(frozen=True)
class Pull:
    model: str
    size: int
    bundle: str


@dataclass(frozen=True)
class NodePlan:
    """One node: the actions to take and what is already so."""

    node: str
    url: str
    reachable: bool
    error: str | None = None
    pulls: tuple[Pull, ...] = ()
    present: tuple[str, ...] = ()
    loaded: tuple[str, ...] = ()
    #: On the node, not placed there by the manifest: left alone without prune.
    undeclared: tuple[str, ...] = ()
    prunes: tuple[str, ...] = ()
    warms: tuple[str, ...] = ()

    @property
    def changes(self) -> int:
        return len(self.pulls) + len(self.prunes) + len(self.warms)

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "url": self.url,
            "reachable": self.reachable,
            "error": self.error,
            "pull": [
                {"model": p.model, "size": p.size, "bundle": p.bundle}
                for p in self.pulls
            ],
            "present": list(self.present),
            "loaded": list(self.loaded),
            "undeclared": list(self.undeclared),
            "prune": list(self.prunes),
            "warm": list(self.warms),
        }


@dataclass(frozen=True)
class FleetPlan:
    nodes: tuple[NodePlan, ...]
    errors: tuple[str, ...] = ()
    prune: bool = False
    #: Model name → the chosen nodes (shows the replica choice).
    placed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Nodes that joined by signed heartbeat (not in the manifest) → how
    #: they were found; they are planned like the manifest's own.
    discovered: Mapping[str, str] = field(default_factory=dict)
    #: The fleet planned for: the manifest's, plus the discovered nodes.
    fleet: Fleet | None = field(default=None, compare=False, repr=False)

    @property
    def changes(self) -> int:
        return sum(n.changes for n in self.nodes)

    @property
    def unreachable(self) -> tuple[str, ...]:
        return tuple(n.node for n in self.nodes if not n.reachable)

    def as_json(self) -> dict[str, Any]:
        return {
            "errors": list(self.errors),
            "prune": self.prune,
            "placement": {m: list(n) for m, n in self.placed.items()},
            "discovered": dict(self.discovered),
            "nodes": [n.as_json() for n in self.nodes],
        }


def _bundle_errors(
    fleet: Fleet, catalog: Mapping[str, Imported], bundles: set[str]
) -> list[str]:
    errors = []
    for i, model in enumerate(fleet.models):
        if model.bundle is None:
            continue
        where = f"models[{i}].bundle"
        if model.bundle not in bundles:
            errors.append(
                f"{where}: bundle {model.bundle!r} is not imported (herd bundle "
                f"import DIR); {model.name} cannot be pulled"
            )
            continue
        found = catalog.get(model.name)
        if found is None or found.bundle != model.bundle:
            errors.append(
                f"{where}: bundle {model.bundle!r} does not contain {model.name}"
                + (f" (it comes from bundle {found.bundle!r})" if found else "")
            )
    return errors


def build(
    fleet: Fleet,
    inventory: Mapping[str, NodeInventory],
    catalog: Mapping[str, Imported],
    bundles: set[str],
    *,
    prune: bool = False,
) -> FleetPlan:
    """The per-node plan for making the live fleet match `fleet`."""
    errors = _bundle_errors(fleet, catalog, bundles)
    chosen = placements(fleet, inventory)
    wanted: dict[str, list[str]] = {n.name: [] for n in fleet.nodes}
    for model in fleet.models:
        for node in chosen[model.name]:
            wanted[node.name].append(model.name)
    by_name = {m.name: m for m in fleet.models}
    plans = []
    for node in fleet.nodes:
        inv = inventory.get(node.name) or NodeInventory(
            node.name, node.url, False, error="not surveyed"
        )
        if not inv.reachable:
            plans.append(NodePlan(node.name, node.url, False, error=inv.error))
            continue
        pulls, present, warms = [], [], []
        for name in wanted[node.name]:
            model = by_name[name]
            if inv.holds(name):
                present.append(name)
                if model.keep_loaded and name not in inv.loaded:
                    warms.append(name)
                continue
            source = catalog.get(name)
            if node.api == "openai":
                errors.append(
                    f"{name}: node {node.name} is an OpenAI-compatible server that "
                    "does not list it: herd cannot place weights there (load the "
                    "model on that server, or place it elsewhere)"
                )
                continue
            if model.bundle is None:
                errors.append(
                    f"{name}: has no bundle and is not on node {node.name}: the "
                    "plan cannot satisfy it (add `bundle:` or place it elsewhere)"
                )
                continue
            if source is not None and source.bundle == model.bundle:
                pulls.append(Pull(name, source.size, source.bundle))
                if model.keep_loaded:
                    warms.append(name)
        undeclared = sorted(set(inv.models) - set(wanted[node.name]))
        plans.append(
            NodePlan(
                node.name,
                node.url,
                True,
                pulls=tuple(pulls),
                present=tuple(present),
                loaded=tuple(sorted(m for m in inv.loaded if m in inv.models)),
                undeclared=tuple(undeclared),
                prunes=tuple(undeclared) if prune and node.api != "openai" else (),
                warms=tuple(warms) if node.api != "openai" else (),
            )
        )
    placed = {m: tuple(n.name for n in nodes) for m, nodes in chosen.items()}
    return FleetPlan(tuple(plans), tuple(errors), prune, placed)
