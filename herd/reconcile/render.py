"""The fleet plan as text: per node, what will be pulled, pruned and warmed."""

from __future__ import annotations

from herd.bundle.progress import human_bytes
from herd.manifest.model import Fleet
from herd.ops.output import shown
from herd.reconcile.actions import FleetPlan


def table(plan: FleetPlan, fleet: Fleet) -> str:
    """A readable per-node listing, ending in a one-line summary."""
    fleet = plan.fleet or fleet
    lines = ["Nodes (live):"]
    for node in plan.nodes:
        if not node.reachable:
            found = plan.discovered.get(node.node)
            note = f" (discovered: {found})" if found else ""
            lines.append(
                f"  {node.node}  unreachable: {node.error} (not planned){note}"
            )
            continue
        found = plan.discovered.get(node.node)
        note = f"  (discovered: {found})" if found else ""
        free = human_bytes(node.free_bytes) if node.free_bytes is not None else None
        lines.append(f"  {node.node}  {node.url}  free disk {free or 'unknown'}{note}")
        rows: list[tuple[str, str, str]] = []
        for pull in node.pulls:
            size = human_bytes(pull.size)
            rows.append(("+ pull", pull.model, f"{size} from bundle {pull.bundle}"))
        for name in node.present:
            rows.append(("= have", name, "loaded" if name in node.loaded else ""))
        for name in node.warms:
            rows.append(("^ warm", name, "load it now (keep_loaded)"))
        for name in node.undeclared:
            if name in node.prunes:
                rows.append(("- delete", name, "not placed here (--prune)"))
            else:
                rows.append(("? leave", name, "not placed here; --prune deletes it"))
        if not rows:
            rows.append(("", "(no models)", ""))
        width = max(len(r[1]) for r in rows)
        lines += [f"    {a:<8} {b:<{width}}  {c}".rstrip() for a, b, c in rows]
    replicas = [
        m for m in fleet.models if m.place.replicas is not None and fleet.nodes_for(m)
    ]
    if replicas:
        lines.append("Replicas:")
        for model in replicas:
            chosen = ", ".join(plan.placed.get(model.name, ())) or "(none)"
            among = ", ".join(n.name for n in fleet.nodes_for(model))
            lines.append(
                f"  {model.name}: {chosen} ({model.place.replicas} of {among})"
            )
    if plan.errors:
        lines.append("Errors:")
        lines += [f"  {e}" for e in plan.errors]
    if plan.unsatisfied:
        lines.append("Cannot be satisfied:")
        lines += [f"  {e}" for e in plan.unsatisfied]
    lines.append("")
    lines.append(f"Fleet: {summary(plan)}.")
    # (Model names and errors come from the nodes: one line each, escaped.)
    return "\n".join(shown(lines))


def summary(plan: FleetPlan) -> str:
    pulls = [p for n in plan.nodes for p in n.pulls]
    prunes = sum(len(n.prunes) for n in plan.nodes)
    warms = sum(len(n.warms) for n in plan.nodes)
    parts = []
    if pulls:
        total = human_bytes(sum(p.size for p in pulls))
        parts.append(f"{len(pulls)} pull{'s' * (len(pulls) != 1)} ({total})")
    if prunes:
        parts.append(f"{prunes} delete{'s' * (prunes != 1)}")
    if warms:
        parts.append(f"{warms} warm-up{'s' * (warms != 1)}")
    text = ", ".join(parts) if parts else "nothing to do on the nodes"
    if plan.unreachable:
        text += f"; unreachable: {', '.join(plan.unreachable)}"
    return text
