"""Plan and record revisions: the library behind `herd plan / apply / rollback`.

A revision is the manifest's bytes, verbatim, plus who/when/sha256/summary.
Recording goes through `Store.record`, which refuses if another apply landed
since the plan was made, so two concurrent applies can never interleave.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from herd.manifest.loader import MAX_BYTES, load_bytes, load_file
from herd.manifest.model import Fleet
from herd.manifest.plan import Plan, diff
from herd.store import Revision, Store


@dataclass(frozen=True)
class Proposal:
    """A loaded manifest and what applying it would change."""

    data: bytes
    source: str
    base_dir: str
    fleet: Fleet
    head: Revision | None
    plan: Plan


def applied_fleet(head: Revision | None) -> Fleet | None:
    """The fleet of a recorded revision (it was valid when recorded)."""
    if head is None:
        return None
    return load_bytes(head.manifest, f"revision {head.id}", head.base_dir or None)


def propose_file(store: Store, path: str | Path) -> Proposal:
    """Load and validate FILE, then diff it against the applied revision."""
    path = Path(path)
    fleet = load_file(path)  # validates; raises ManifestError with every problem
    data = path.read_bytes()[: MAX_BYTES + 1]
    return propose(store, data, str(path), str(path.resolve().parent), fleet)


def propose_revision(store: Store, rev: int) -> Proposal:
    """Re-apply an old revision: same plan/confirm path as a file."""
    old = store.revision(rev)
    fleet = load_bytes(old.manifest, f"revision {old.id}", old.base_dir or None)
    return propose(
        store, old.manifest, old.source or f"revision {rev}", old.base_dir, fleet
    )


def propose(
    store: Store, data: bytes, source: str, base_dir: str, fleet: Fleet
) -> Proposal:
    head = store.head()
    return Proposal(
        data, source, base_dir, fleet, head, diff(applied_fleet(head), fleet)
    )


def record(
    store: Store, proposal: Proposal, *, rollback_of: int | None = None
) -> Revision | None:
    """Record the proposal as the new head; None when it equals the head already."""
    revision = store.record(
        proposal.data,
        expected_head=proposal.head.id if proposal.head else None,
        summary=proposal.plan.summary(),
        source=proposal.source,
        base_dir=proposal.base_dir,
        action="rollback" if rollback_of is not None else "apply",
        rollback_of=rollback_of,
        detail={"changes": len(proposal.plan.changes)},
    )
    store.prune_audit(proposal.fleet.audit.retention_days)
    return revision
