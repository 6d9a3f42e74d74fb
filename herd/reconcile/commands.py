"""The node side of `herd plan` and `herd apply` (the CLI glue; herd.manifest.commands
calls these). Kept apart so the revision commands stay small."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
import time
from typing import Any

from herd.discovery import roster
from herd.errors import ConfigError
from herd.manifest.model import Fleet
from herd.reconcile import render, session
from herd.reconcile.actions import FleetPlan
from herd.reconcile.progress import Report
from herd.router.hostnames import KnownHosts
from herd.settings import APPLY_NODES, REGISTRY, ROUTER_TOKEN
from herd.store import Store

WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def add_flags(parser: argparse.ArgumentParser, *, apply: bool) -> None:
    """`--prune` for plan and apply; `--registry`, `--parallel` for apply."""
    parser.add_argument(
        "--prune",
        action="store_true",
        help="also delete models the manifest does not place on a node "
        "(listed in the plan; asks first unless --yes)",
    )
    if apply:
        REGISTRY.add_to(parser)
        parser.add_argument(
            "--parallel",
            type=int,
            default=4,
            metavar="N",
            help="nodes worked on at once (default 4)",
        )


def live_plan(
    args: argparse.Namespace, store: Store | None, fleet: Fleet
) -> FleetPlan | None:
    """The per-node plan, or None when HERD_APPLY_NODES=0 (revisions only)."""
    if not APPLY_NODES.resolve():
        return None
    # Nodes that joined by heartbeat are planned for too, as the router
    # serves them (herd.discovery.roster reads what its workers recorded).
    members = roster.live_members(
        store.dir if store is not None else None,
        fleet.discovery.heartbeat_timeout_s,
    )
    planned = roster.with_discovered(fleet, members)
    fleet_plan = session.plan_live(
        store,
        planned,
        prune=getattr(args, "prune", False),
        free_bytes=roster.disk_free(members),
        token=ROUTER_TOKEN.resolve(None),
    )
    now = time.time()
    discovered = {
        m.name: roster.describe(m, now)
        for m in members
        if planned is not fleet and fleet.node(m.name) is None and not m.static_name
    }
    return dataclasses.replace(fleet_plan, discovered=discovered, fleet=planned)


def registry_address(fleet: Fleet, cli_value: str | None) -> str:
    """HOST:PORT the nodes pull from: --registry / HERD_REGISTRY, else router.listen."""
    value = REGISTRY.resolve(cli_value)
    if not value:
        host, _, _port = fleet.router.listen.rpartition(":")
        if host.strip("[]") in WILDCARDS or _is_wildcard(host):
            raise ConfigError(
                f"router.listen is {fleet.router.listen}, which nodes cannot pull "
                "from: pass --registry HOST:PORT (the router's address on the node "
                "network; env HERD_REGISTRY)"
            )
        value = fleet.router.listen
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in value:
        raise ConfigError(f"--registry {value!r}: expected HOST:PORT")
    if not KnownHosts.of(fleet).allows(value):
        # The router refuses a Host it is not known by (DNS rebinding guard):
        # the nodes' pulls would all fail with 421.
        raise ConfigError(
            f"--registry {value!r}: the router answers to {host!r} only when "
            "router.hostnames in the manifest lists it (or give its address)"
        )
    return value


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def show(fleet_plan: FleetPlan, fleet: Fleet) -> None:
    print("\n" + render.table(fleet_plan, fleet))


def show_errors(fleet_plan: FleetPlan) -> None:
    for error in fleet_plan.errors:
        print(f"herd: plan error: {error}", file=sys.stderr)
    for reason in fleet_plan.unsatisfied:
        print(f"herd: cannot be satisfied: {reason}", file=sys.stderr)


def as_json(fleet_plan: FleetPlan | None) -> dict[str, Any]:
    if fleet_plan is None:
        return {"fleet": None}
    return {"fleet": {"summary": render.summary(fleet_plan), **fleet_plan.as_json()}}


def confirm_question(fleet_plan: FleetPlan) -> str:
    deletes = [f"{m} on {n.node}" for n in fleet_plan.nodes for m in n.prunes]
    question = "Apply this plan to the nodes?"
    if deletes:
        question = f"Apply this plan, DELETING {', '.join(deletes)}?"
    return question


def act(
    args: argparse.Namespace,
    store: Store,
    fleet_plan: FleetPlan,
    fleet: Fleet,
    registry: str,
    revision: int | None,
) -> int:
    """Carry the plan out; print the summary; 0 when the fleet is now as planned
    (every step succeeded and no node it must change was unreachable)."""
    if args.json:
        mode = "json"
    else:
        mode = "tty" if sys.stdout.isatty() else "lines"
        if fleet_plan.changes:
            print()
    report = Report(mode=mode)
    session.apply_live(
        store,
        fleet_plan,
        fleet_plan.fleet or fleet,
        registry,
        report,
        revision=revision,
        parallel=args.parallel,
    )
    names = [n.node for n in fleet_plan.nodes]
    ok = report.ok and not fleet_plan.unsatisfied
    if args.json:
        print(
            json.dumps(
                {
                    "event": "summary",
                    "ok": ok,
                    "revision": revision,
                    "done": report.done,
                    "failed": report.failed,
                    "unreachable": list(fleet_plan.unreachable),
                    "unsatisfied": list(fleet_plan.unsatisfied),
                },
                sort_keys=True,
            )
        )
    else:
        print("\n" + report.summary(names, fleet_plan.unreachable))
        for reason in fleet_plan.unsatisfied:
            print(f"Not done: {reason}")
        if not ok:
            print("Fix the cause and run apply again to finish.")
    return 0 if ok else 1
