"""Which nodes each model goes to: the manifest's placement, `replicas` honoured.

Pure. With `replicas: N` and more matching nodes than N, herd picks N of them
deterministically: nodes that already hold the model first (so a re-plan
never moves a model that is in place), then the most free disk where nodes
report it (whole GiB, so small changes between runs move nothing; a node
whose disk is unknown ranks as having none), then a rendezvous hash of
(model, node). The hash makes the choice stable across runs and across
unrelated manifest edits (adding a node moves only the models that hash onto
it, never reshuffles the rest), and spreads different models over different
nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from herd.manifest.model import Fleet, Model, Node
from herd.reconcile.inventory import NodeInventory


def _hash(model: str, node: str) -> int:
    digest = hashlib.sha256(f"{model}\0{node}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def choose(
    model: Model,
    candidates: tuple[Node, ...],
    inventory: Mapping[str, NodeInventory],
) -> tuple[Node, ...]:
    """The nodes `model` should be on (manifest order)."""
    wanted = model.place.replicas
    if wanted is None or wanted >= len(candidates):
        return candidates

    def rank(node: Node) -> tuple[int, int, int]:
        inv = inventory.get(node.name)
        holds = bool(inv and inv.holds(model.name))
        free = inv.free_bytes if inv and inv.free_bytes is not None else 0
        free >>= 30
        return (0 if holds else 1, -free, _hash(model.name, node.name))

    picked = {n.name for n in sorted(candidates, key=rank)[:wanted]}
    return tuple(n for n in candidates if n.name in picked)


def placements(
    fleet: Fleet, inventory: Mapping[str, NodeInventory]
) -> dict[str, tuple[Node, ...]]:
    """Model name → the nodes it should be on, for every declared model."""
    return {m.name: choose(m, fleet.nodes_for(m), inventory) for m in fleet.models}


def placements_without_inventory(fleet: Fleet) -> dict[str, tuple[Node, ...]]:
    """The same choice when nothing is known about the nodes (hash order only)."""
    return placements(fleet, {})
