"""Carrying a fleet plan out on the nodes, in parallel, one failure not stopping others.

Per node, in order: each pull (`REGISTRY/library/NAME:TAG` through the node's
/api/pull), its copy (/api/copy to `NAME:TAG`, the name clients use) and
untag (/api/delete of the registry name: the blobs stay), each delete of
`--prune`, each warm-up. Nodes run in
parallel, at most `parallel` at once; a failed step is reported and that
model's later steps skipped, the node's other models and the other nodes go
on. Re-running finishes what is left (a node resumes partial downloads).

`run` yields events (plain dicts, JSON-ready) in the caller's thread, so the
caller can render them and write the audit log without any locking:

    {"event": "start"|"done"|"failed", "node", "action", "model", ["error"], ...}
    {"event": "progress", "node", "action", "model", "status", "completed", "total"}
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from herd.manifest.model import Fleet
from herd.reconcile.actions import FleetPlan, NodePlan
from herd.reconcile.nodeapi import NodeAPI, NodeError

PARALLEL = 4
#: At most this many progress events per second per transfer.
PROGRESS_HZ = 4.0
_END = object()
Event = dict[str, Any]


def registry_name(registry: str, model: str) -> str:
    """`tiny:latest` → `ROUTER:PORT/library/tiny:latest` (what the node pulls)."""
    return f"{registry}/library/{model}"


class _Node:
    """The steps of one node's plan; emits events through `emit`."""

    def __init__(
        self,
        plan: NodePlan,
        fleet: Fleet,
        registry: str,
        emit: Callable[[Event], None],
        api: Callable[[str], Any],
    ):
        self.plan = plan
        self.fleet = fleet
        self.registry = registry
        self.emit = emit
        self.api = api(plan.url)

    def _step(
        self, action: str, model: str, fn: Callable[[], Any], **extra: Any
    ) -> bool:
        base = {"node": self.plan.node, "action": action, "model": model}
        self.emit({"event": "start", **base, **extra})
        began = time.monotonic()
        try:
            fn()
        except NodeError as ex:
            self.emit({"event": "failed", **base, "error": ex.message, **extra})
            return False
        except Exception as ex:  # noqa: BLE001 - one node's bug must not stop others
            error = f"{type(ex).__name__}: {ex}"
            self.emit({"event": "failed", **base, "error": error, **extra})
            return False
        seconds = round(time.monotonic() - began, 3)
        self.emit({"event": "done", **base, "seconds": seconds, **extra})
        return True

    def _pull(self, model: str) -> None:
        source = registry_name(self.registry, model)
        last = [0.0]

        def progress(event: Event) -> None:
            now = time.monotonic()
            final = event.get("completed") == event.get("total")
            if "total" in event and not final and now - last[0] < 1 / PROGRESS_HZ:
                return
            last[0] = now
            self.emit(
                {
                    "event": "progress",
                    "node": self.plan.node,
                    "action": "pull",
                    "model": model,
                    "status": event.get("status", ""),
                    "completed": event.get("completed"),
                    "total": event.get("total"),
                }
            )

        self.api.pull(source, progress)

    def _install(self, model: str, size: int, bundle: str) -> bool:
        """Pull under the registry name, copy to the short name, drop the former."""
        source = registry_name(self.registry, model)
        return (
            self._step(
                "pull",
                model,
                lambda: self._pull(model),
                bytes=size,
                bundle=bundle,
                source=source,
            )
            and self._step(
                "copy", model, lambda: self.api.copy(source, model), source=source
            )
            and self._step(
                "untag", model, lambda: self.api.delete(source), source=source
            )
        )

    def run(self) -> None:
        pulled_ok: set[str] = set()
        for pull in self.plan.pulls:
            if self._install(pull.model, pull.size, pull.bundle):
                pulled_ok.add(pull.model)
        for name in self.plan.prunes:
            self._step("delete", name, lambda n=name: self.api.delete(n))
        pulled = {p.model for p in self.plan.pulls}
        for name in self.plan.warms:
            model = self.fleet.resolve(name)
            if name in pulled and name not in pulled_ok:
                continue  # its pull failed: nothing to load
            keep = (model.keep_loaded if model else None) or "-1"
            self._step(
                "warm",
                name,
                lambda n=name, k=keep: self.api.warm(n, k),
                keep_alive=keep,
            )


def run(
    plan: FleetPlan,
    fleet: Fleet,
    registry: str,
    *,
    parallel: int = PARALLEL,
    api: Callable[[str], Any] = NodeAPI,
) -> Iterator[Event]:
    """Execute `plan` on its reachable nodes; yield every event as it happens."""
    events: queue.Queue = queue.Queue()
    work = [n for n in plan.nodes if n.reachable and n.changes]
    if not work:
        return

    def one(node: NodePlan) -> None:
        try:
            _Node(node, fleet, registry, events.put, api).run()
        except Exception as ex:  # noqa: BLE001 - reported, never silent
            events.put(
                {
                    "event": "failed",
                    "node": node.node,
                    "action": "node",
                    "model": "",
                    "error": f"{type(ex).__name__}: {ex}",
                }
            )

    def all_nodes() -> None:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            list(pool.map(one, work))
        events.put(_END)

    threading.Thread(target=all_nodes, name="herd-apply", daemon=True).start()
    while (event := events.get()) is not _END:
        yield event
