"""`herd validate / plan / apply / history / show / rollback` (see herd.cli)."""

from __future__ import annotations

import argparse
import json
import sys

from herd.cli import add_command, print_json
from herd.errors import ConfigError, ManifestError
from herd.manifest import firewall, keepalived
from herd.manifest.loader import load_file
from herd.manifest.revisions import Proposal, propose_file, propose_revision, record
from herd.reconcile import commands as reconcile
from herd.reconcile.actions import FleetPlan
from herd.settings import STATE_DIR
from herd.store import Store, read_pointer, sha256_hex


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the manifest and revision commands."""
    p = add_command(
        sub,
        "validate",
        cmd_validate,
        parents=[common],
        json_flag=True,
        help="check a fleet manifest against the schema and for semantic errors",
        examples="""\
  herd validate etc/fleet.yaml
  herd validate --json fleet.yaml | jq '.problems[].message'
exit status: 0 valid, 1 invalid (one line per problem: FILE:LINE: path: message)""",
    )
    p.add_argument("file", metavar="FILE", help="the fleet manifest (YAML)")

    p = add_command(
        sub,
        "plan",
        cmd_plan,
        parents=[common],
        json_flag=True,
        help="show what applying a manifest would change, in the revision and on "
        "the live nodes",
        examples="""\
  herd plan etc/fleet.yaml
  herd plan --prune etc/fleet.yaml       # also list what --prune would delete
  herd plan --json etc/fleet.yaml > plan.json
exit status: 0 no changes, 2 changes, 1 error (a bundle not imported, a model
no bundle can supply, a node with placements that does not answer)""",
    )
    p.add_argument("file", metavar="FILE", help="the fleet manifest (YAML)")
    reconcile.add_flags(p, apply=False)

    p = add_command(
        sub,
        "apply",
        cmd_apply,
        parents=[common],
        json_flag=True,
        help="plan, confirm, record a manifest as the new revision and make the "
        "nodes hold what it places on them",
        examples="""\
  herd apply etc/fleet.yaml          # shows the plan, asks before acting
  herd apply --yes etc/fleet.yaml    # no prompt (scripts, CI, config management)
  herd apply --prune fleet.yaml      # also delete models the manifest left out
  herd apply --registry 10.20.1.5:11435 --json --yes fleet.yaml | jq .
nodes pull through the router's registry (`herd serve` must be running);
the running router picks the new revision up within 2 s, without a restart;
--json prints JSON Lines, one object per line with an "event": plan,
recorded, then per node step start/progress/done/failed, and always a final
summary {"ok", "revision", "done", "failed", "unreachable", "unsatisfied"}
(or {"ok": false, "error"} when nothing was applied);
exit status 0 done, 1 when a step failed, the plan has errors, or a node
the manifest places models on was unreachable (the others are still done)""",
    )
    p.add_argument("file", metavar="FILE", help="the fleet manifest (YAML)")
    p.add_argument("-y", "--yes", action="store_true", help="apply without asking")
    reconcile.add_flags(p, apply=True)

    add_command(
        sub,
        "history",
        cmd_history,
        parents=[common],
        json_flag=True,
        help="list recorded revisions (who, when, digest, summary)",
        examples="""\
  herd history
  herd history --json | jq '.[-1]'""",
    )

    p = add_command(
        sub,
        "show",
        cmd_show,
        parents=[common],
        help="print the manifest of a recorded revision, byte for byte",
        examples="""\
  herd show 3
  herd show 3 > fleet-rev3.yaml""",
    )
    p.add_argument("rev", metavar="REV", type=int, help="revision number")

    p = add_command(
        sub,
        "rollback",
        cmd_rollback,
        parents=[common],
        json_flag=True,
        help="re-apply an old revision (recorded as a new revision; the nodes "
        "follow it as with apply)",
        examples="""\
  herd rollback 3
  herd rollback 3 --yes --registry 10.20.1.5:11435""",
    )
    p.add_argument("rev", metavar="REV", type=int, help="revision to go back to")
    p.add_argument("-y", "--yes", action="store_true", help="roll back without asking")
    reconcile.add_flags(p, apply=True)


def open_store(
    args: argparse.Namespace, *, create: bool = True, readonly: bool = False
) -> Store:
    return Store(STATE_DIR.resolve(args.state_dir), create=create, readonly=readonly)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        fleet = load_file(args.file)
    except ManifestError as ex:
        if args.json:
            print_json(
                {
                    "file": args.file,
                    "valid": False,
                    "problems": [
                        {"line": p.line, "path": p.path, "message": p.message}
                        for p in ex.problems
                    ],
                }
            )
            return 1
        raise
    if args.json:
        print_json({"file": args.file, "valid": True, "problems": []})
    else:
        print(
            f"{args.file}: valid: fleet {fleet.name!r}, {len(fleet.nodes)} nodes, "
            f"{len(fleet.models)} models, {len(fleet.router.clients)} client groups"
        )
    return 0


def _print_plan(
    args: argparse.Namespace, proposal: Proposal, fleet_plan: FleetPlan | None = None
) -> None:
    if args.json:
        print_json(
            {
                "file": proposal.source,
                "from_revision": proposal.head.id if proposal.head else None,
                **proposal.plan.as_json(),
                **reconcile.as_json(fleet_plan),
            }
        )
        return
    against = f"revision {proposal.head.id}" if proposal.head else "an empty fleet"
    print(f"Plan for {proposal.source} against {against}:\n")
    print(proposal.plan.table())
    note = keepalived.plan_note(proposal.fleet)
    if note:
        print(note)


def cmd_plan(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=True)  # plan looks; it never creates state
    try:
        proposal = propose_file(store, args.file)
        fleet_plan = reconcile.live_plan(args, store, proposal.fleet)
    finally:
        store.close()
    if proposal.head is None:
        print(
            f"No revision applied yet in {store.dir}; everything is new.",
            file=sys.stderr if args.json else sys.stdout,
        )
    _print_plan(args, proposal, fleet_plan)
    if fleet_plan is None:
        return 0 if proposal.plan.empty else 2
    if not args.json:
        reconcile.show(fleet_plan, proposal.fleet)
    if fleet_plan.errors or fleet_plan.unsatisfied:
        reconcile.show_errors(fleet_plan)
        return 1
    return 0 if proposal.plan.empty and not fleet_plan.changes else 2


def _confirm(args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(
            "refusing to apply without confirmation: stdin is not a terminal "
            "(pass --yes to apply non-interactively)"
        )
    answer = input(f"\n{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise ConfigError("not applied: not confirmed")


def _event(event: str, **fields: object) -> None:
    """One line of `apply --json` (JSON Lines; every object has "event")."""
    print(json.dumps({"event": event, **fields}, sort_keys=True, default=str))
    sys.stdout.flush()


def cmd_apply(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        store.sync_pointer()
        return _apply(args, store, propose_file(store, args.file), None)
    finally:
        store.close()


def _apply(
    args: argparse.Namespace, store: Store, proposal: Proposal, rollback_of: int | None
) -> int:
    """Plan, confirm once, record the revision, then make the nodes match it.

    With --json every outcome is JSON Lines: a "plan" event, a "recorded"
    event, the node events, and always a final "summary" event (also when
    the plan has errors or confirmation is refused).
    """
    try:
        return _apply_steps(args, store, proposal, rollback_of)
    except ConfigError as ex:
        if args.json:
            _event("summary", ok=False, error=str(ex))
        raise


def _apply_steps(
    args: argparse.Namespace, store: Store, proposal: Proposal, rollback_of: int | None
) -> int:
    fleet = proposal.fleet
    fleet_plan = reconcile.live_plan(args, store, fleet)
    head = proposal.head
    unchanged = bool(head and head.sha256 == sha256_hex(proposal.data))
    node_work = bool(fleet_plan and fleet_plan.changes)
    if args.json:
        _event(
            "plan",
            file=proposal.source,
            from_revision=head.id if head else None,
            **proposal.plan.as_json(),
            **reconcile.as_json(fleet_plan),
        )
    elif unchanged and head:
        if node_work:
            print(f"The manifest is revision {head.id}; the nodes differ:")
    else:
        _print_plan(args, proposal)
    if fleet_plan is not None and not args.json:
        reconcile.show(fleet_plan, fleet)
    if fleet_plan is not None and fleet_plan.errors:
        reconcile.show_errors(fleet_plan)
        if args.json:
            _event("summary", ok=False, errors=list(fleet_plan.errors))
            return 1
        raise ConfigError("not applied: the plan has errors (nothing was changed)")
    registry = reconcile.registry_address(fleet, args.registry) if node_work else ""
    if node_work:
        _confirm(args, reconcile.confirm_question(fleet_plan))
    elif not unchanged:
        _confirm(args, "Record this as a new revision?")
    revision = _record(args, store, proposal, rollback_of, unchanged)
    if fleet_plan is None:
        if args.json:
            _event("summary", ok=True, revision=revision, done={}, failed={})
        return 0
    return reconcile.act(args, store, fleet_plan, fleet, registry, revision)


def _record(
    args: argparse.Namespace,
    store: Store,
    proposal: Proposal,
    rollback_of: int | None,
    unchanged: bool,
) -> int | None:
    """Record the proposal as the new revision (unless identical); its number."""
    head = proposal.head
    if unchanged and head:
        message = f"No changes: identical to revision {head.id}; nothing recorded."
        if args.json:
            _event("recorded", recorded=False, revision=head.id, message=message)
        else:
            print(message)
        return head.id
    recorded = record(store, proposal, rollback_of=rollback_of)
    if recorded is None:  # an identical apply won the race
        current = store.head()
        message = "No changes: an identical revision was recorded meanwhile."
        if args.json:
            _event("recorded", recorded=False, revision=current.id, message=message)
        else:
            print(message)
        return current.id
    firewall.after_record(proposal.fleet, recorded.id, store.dir)
    keepalived.after_record(proposal.fleet, recorded.id, store.dir)
    if args.json:
        _event(
            "recorded",
            recorded=True,
            revision=recorded.id,
            sha256=recorded.sha256,
            summary=recorded.summary,
        )
    else:
        print(
            f"\nRecorded revision {recorded.id} (sha256 {recorded.sha256[:12]}): "
            f"{recorded.summary}. Routers reload it within 2 s."
        )
    return recorded.id


def cmd_rollback(args: argparse.Namespace) -> int:
    store = open_store(args, create=False)
    try:
        store.sync_pointer()
        return _apply(args, store, propose_revision(store, args.rev), args.rev)
    finally:
        store.close()


def cmd_history(args: argparse.Namespace) -> int:
    store = open_store(args, create=False)
    try:
        revisions = store.revisions()
        pointer = read_pointer(store.dir)
    finally:
        store.close()
    current = pointer.revision if pointer else None
    if args.json:
        print_json(
            [
                {
                    "revision": r.id,
                    "created": r.created,
                    "user": r.user,
                    "action": r.action,
                    "sha256": r.sha256,
                    "summary": r.summary,
                    "source": r.source,
                    "rollback_of": r.rollback_of,
                    "current": r.id == current,
                    "intact": r.intact,
                }
                for r in revisions
            ]
        )
        return 0
    if not revisions:
        print("No revisions yet: run `herd apply FILE`.")
        return 0
    rows = [("REV", "WHEN (UTC)", "WHO", "ACTION", "SHA256", "SUMMARY")]
    for r in revisions:
        action = f"rollback→{r.rollback_of}" if r.rollback_of else r.action
        mark = "*" if r.id == current else " "
        if not r.intact:
            mark = "!"
        rows.append(
            (f"{mark}{r.id}", r.created, r.user, action, r.sha256[:12], r.summary)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print(
            "  ".join(f"{c:<{w}}" for c, w in zip(row[:5], widths, strict=True))
            + "  "
            + row[5]
        )
    print("\n* current revision")
    if not all(r.intact for r in revisions):
        print("! altered in herd.db: its bytes no longer match its sha256 (refused)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = open_store(args, create=False)
    try:
        revision = store.revision(args.rev)
    finally:
        store.close()
    sys.stdout.buffer.write(revision.manifest)
    sys.stdout.flush()
    return 0
