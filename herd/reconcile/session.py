"""The I/O around a fleet plan: read the catalog and the live fleet, then apply.

`plan_live` gathers what `herd plan` shows (bundle catalog from the state
store, every node's models); `apply_live` runs the plan and writes one audit
row per pull, delete and warm-up with the revision, the operator and the
outcome. Both are called from the CLI (herd.manifest.commands).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from herd.manifest.model import Fleet, normalize_model_name
from herd.reconcile import actions, executor, inventory
from herd.reconcile.actions import FleetPlan, Imported
from herd.reconcile.progress import Report
from herd.store import Store, current_user


def catalog(store: Store | None) -> tuple[dict[str, Imported], set[str]]:
    """Imported models by name, and bundle names (empty before any import)."""
    if store is None:
        return {}, set()
    try:
        tables = set(store.db.table_names())
        if not {"bundles", "bundle_models"} <= tables:
            return {}, set()
        models = {
            normalize_model_name(r["name"]): Imported(
                normalize_model_name(r["name"]), r["bundle"], int(r["size"] or 0)
            )
            for r in store.db.query("SELECT name, bundle, size FROM bundle_models")
        }
        bundles = {r["name"] for r in store.db.query("SELECT name FROM bundles")}
    except sqlite3.Error:
        return {}, set()
    return models, bundles


def plan_live(
    store: Store | None,
    fleet: Fleet,
    *,
    prune: bool = False,
    get_json: inventory.GetJson = inventory.http_get_json,
    free_bytes: Mapping[str, int] | None = None,
) -> FleetPlan:
    """The per-node plan for `fleet` against the live nodes. `free_bytes`
    (node name → disk free, as node agents report it) informs replica choice."""
    models, bundles = catalog(store)
    found = inventory.survey(fleet, get_json)
    for name, free in (free_bytes or {}).items():
        if name in found and found[name].reachable:
            found[name] = dataclasses.replace(found[name], free_bytes=free)
    return actions.build(fleet, found, models, bundles, prune=prune)


def apply_live(
    store: Store,
    plan: FleetPlan,
    fleet: Fleet,
    registry: str,
    report: Report,
    *,
    revision: int | None,
    parallel: int = executor.PARALLEL,
    api: Callable[[str], Any] | None = None,
) -> Report:
    """Run `plan`; every finished step is rendered and audited as it happens."""
    user = current_user()
    kwargs = {"api": api} if api else {}
    for event in executor.run(plan, fleet, registry, parallel=parallel, **kwargs):
        report.add(event)
        if event["event"] in ("done", "failed"):
            detail = {k: v for k, v in event.items() if k not in ("event", "action")}
            detail["outcome"] = "ok" if event["event"] == "done" else "failed"
            store.audit("node." + event["action"], detail, revision=revision, user=user)
    return report
