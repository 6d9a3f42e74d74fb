"""A health finding, and the findings every check shares (unknown facts).

A finding has an id (its check's), a severity, a one-line finding and a
suggested action. Severities, worst first: critical, warning, unknown, info.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from herd.health.snapshot import NodeFacts, Snapshot

SEVERITIES = ("critical", "warning", "unknown", "info")


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    finding: str
    action: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


Check = Callable[[Snapshot], Iterable[Finding]]


def names(nodes: Iterable[NodeFacts]) -> str:
    return ", ".join(n.name for n in nodes)


def no_agent(check: str, what: str, nodes: list[NodeFacts]) -> list[Finding]:
    """The "unknown" finding for nodes no agent reports for."""
    if not nodes:
        return []
    return [
        Finding(
            check,
            "unknown",
            f"{what} unknown on {names(nodes)}: no herd node agent reports there",
            "run `herd node --router URL` on the node to report host metrics",
        )
    ]


def unknown(check: str, message: str, hint: str) -> list[Finding]:
    """A check's one finding when it cannot tell (severity "unknown")."""
    return [Finding(check, "unknown", message, hint)]


def offline(check: str) -> list[Finding]:
    """The "unknown" finding of a check that needs the live router."""
    return [
        Finding(
            check,
            "unknown",
            f"{check.replace('_', ' ')}: unknown, the router did not answer",
            "start the router (`herd serve` or systemctl start herd-router)",
        )
    ]
