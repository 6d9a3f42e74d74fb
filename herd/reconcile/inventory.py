"""What the live fleet holds: each node's /api/tags and /api/ps, asked in parallel.

Agentless: only Ollama's own API, with a timeout on every call. A node that
does not answer is reported unreachable with the reason; the plan then says
it cannot tell what that node needs, rather than guessing.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from herd.discovery.health import model_key
from herd.manifest.model import Fleet, Node, normalize_model_name

TIMEOUT_S = 5.0
GetJson = Callable[[str, float], Any]


@dataclass(frozen=True)
class NodeInventory:
    """One node's models: names as clients use them (short), and loaded ones."""

    node: str
    url: str
    reachable: bool
    error: str | None = None
    #: Short model name (`name:tag`) → the node's digest of it. Registry-named
    #: copies (`HOST:PORT/library/NAME:TAG`, left by an apply interrupted
    #: before its copy step) do not count: clients cannot reach them by the
    #: short name, so the model is pulled again (from the node's own blobs).
    models: Mapping[str, str] = field(default_factory=dict)
    loaded: frozenset[str] = frozenset()
    #: Free disk in bytes, when the node reports it (Ollama does not).
    free_bytes: int | None = None

    def holds(self, model: str) -> bool:
        return normalize_model_name(model) in self.models


def http_get_json(
    url: str, timeout: float, headers: Mapping[str, str] | None = None
) -> Any:
    """GET `url` and parse its JSON body (raises OSError/ValueError on failure)."""
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
        return json.loads(reply.read())


def _entries(doc: Any) -> list[Mapping[str, Any]]:
    models = doc.get("models") if isinstance(doc, dict) else None
    return [m for m in models or () if isinstance(m, dict)]


def read_node(
    node: Node, get_json: GetJson = http_get_json, timeout: float = TIMEOUT_S
) -> NodeInventory:
    """Ask one node for its models; never raises."""
    if node.api == "openai":
        return _read_openai(node, get_json, timeout)
    try:
        tags = _entries(get_json(node.url + "/api/tags", timeout))
        ps = _entries(get_json(node.url + "/api/ps", timeout))
    except (OSError, ValueError, urllib.error.URLError) as ex:
        reason = getattr(ex, "reason", None) or ex
        return NodeInventory(node.name, node.url, False, error=str(reason))
    models: dict[str, str] = {}
    for entry in tags:
        name = str(entry.get("model") or entry.get("name") or "")
        if name and "/library/" not in name.lower():
            models[model_key(name)] = str(entry.get("digest") or "")
    loaded = frozenset(
        model_key(str(e.get("model") or e.get("name") or "")) for e in ps
    )
    return NodeInventory(
        node.name,
        node.url,
        True,
        models=models,
        loaded=loaded,
    )


def _read_openai(node: Node, get_json: GetJson, timeout: float) -> NodeInventory:
    """An OpenAI-compatible node: what /v1/models lists is on it and loaded."""
    url = node.url + "/v1/models"
    try:
        if node.auth:
            doc = http_get_json(url, timeout, node.auth)
        else:
            doc = get_json(url, timeout)
    except (OSError, ValueError, urllib.error.URLError) as ex:
        reason = getattr(ex, "reason", None) or ex
        return NodeInventory(node.name, node.url, False, error=str(reason))
    data = doc.get("data") if isinstance(doc, dict) else None
    ids = [e["id"] for e in data or () if isinstance(e, dict) and "id" in e]
    models = {model_key(str(i)): "" for i in ids}
    return NodeInventory(
        node.name, node.url, True, models=models, loaded=frozenset(models)
    )


def survey(
    fleet: Fleet,
    get_json: GetJson = http_get_json,
    timeout: float = TIMEOUT_S,
    parallel: int = 8,
) -> dict[str, NodeInventory]:
    """Every node of `fleet`, asked in parallel; keyed by node name."""
    if not fleet.nodes:
        return {}
    with ThreadPoolExecutor(max_workers=min(parallel, len(fleet.nodes))) as pool:
        found = pool.map(lambda n: read_node(n, get_json, timeout), fleet.nodes)
        return {inv.node: inv for inv in found}
