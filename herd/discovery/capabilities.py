"""Model capabilities from /api/show, for nodes whose /api/tags lists none.

The router decides whether a model thinks (and so whether its output cap is
raised, herd.router.convert.thinking) from the manifest, then from the
`capabilities` a node lists for it, then from its name. Recent Ollama
releases list `capabilities` in /api/tags; older ones only in /api/show
(`completion`, `tools`, `insert`, `vision`, `embedding`, `thinking`, ...).
For an /api/tags entry without them, the health poller asks /api/show once
per node and model digest: a digest names the model's exact bytes, so the
answer cannot change until the model does.

Bounded: at most `per_poll` /api/show requests per node per poll (a node with
many models is filled in over a few polls, and a poll never waits on more
than that), each with the poll's timeout; at most `limit` answers are kept
(the oldest go first). A failed or odd answer is remembered as "none" for that
digest, so a node without /api/show is not asked again every second; the
model then falls back to its name, as before.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

#: /api/show requests per node and poll.
PER_POLL = 1
#: (node URL, digest) answers kept.
LIMIT = 4096
#: Largest /api/show answer read (model_info can be long; capabilities are
#: near the end).
MAX_BYTES = 4 * 1024 * 1024


class ShowCache:
    """Capabilities by (node URL, model digest), fetched from /api/show."""

    def __init__(
        self, upstream: Any, per_poll: int = PER_POLL, limit: int = LIMIT
    ) -> None:
        self._upstream = upstream
        self.per_poll = per_poll
        self.limit = limit
        self._known: OrderedDict[tuple[str, str], tuple[str, ...] | None] = (
            OrderedDict()
        )
        #: /api/show requests sent so far (for tests and diagnostics).
        self.asked = 0

    def fill(
        self,
        url: str,
        entries: tuple[dict[str, Any], ...],
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> tuple[dict[str, Any], ...]:
        """`entries` (/api/tags models) with `capabilities` added where the
        node's /api/show has them and the entry itself does not."""
        budget = self.per_poll
        out = []
        for entry in entries:
            digest = entry.get("digest")
            name = entry.get("model") or entry.get("name")
            if (
                isinstance(entry.get("capabilities"), list)
                or not isinstance(digest, str)
                or not isinstance(name, str)
            ):
                out.append(entry)
                continue
            key = (url, digest)
            if key not in self._known and budget > 0:
                budget -= 1
                self._remember(key, self._ask(url, name, timeout, headers))
            caps = self._known.get(key)
            out.append({**entry, "capabilities": list(caps)} if caps else entry)
        return tuple(out)

    def _remember(self, key: tuple[str, str], caps: tuple[str, ...] | None) -> None:
        self._known[key] = caps
        while len(self._known) > self.limit:
            self._known.popitem(last=False)

    def _ask(
        self,
        url: str,
        name: str,
        timeout: float,
        headers: dict[str, str] | None,
    ) -> tuple[str, ...] | None:
        """The model's capabilities per /api/show, or None (any failure)."""
        self.asked += 1
        body = json.dumps({"model": name}).encode()
        try:
            reply = self._upstream.open(
                url,
                "POST",
                "/api/show",
                body,
                connect_s=timeout,
                network_s=timeout,
                headers={**(headers or {}), "Content-Type": "application/json"},
            )
            try:
                data = reply.read()
            finally:
                reply.close()
        except Exception:  # noqa: BLE001 - optional detail: the name decides then
            return None
        if reply.status != 200 or len(data) > MAX_BYTES:
            return None
        return capabilities_of(data)


def capabilities_of(data: bytes) -> tuple[str, ...] | None:
    """`capabilities` of an /api/show answer: strings only, or None."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    caps = doc.get("capabilities") if isinstance(doc, Mapping) else None
    if not isinstance(caps, list):
        return None
    return tuple(c for c in caps if isinstance(c, str) and len(c) <= 64)[:32]
