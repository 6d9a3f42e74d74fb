"""The fleet manifest as frozen objects, built from an already validated document.

The JSON Schema (schemas/fleet.schema.json) is the one truth about the manifest's
shape; this module only turns a validated document into typed, immutable values
and answers questions about it (which model a name means, which nodes a model is
placed on). Defaults live in the schema (`default`) and are applied here from it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORT = 11435


def normalize_model_name(name: str) -> str:
    """Ollama's short form: `llama3` means `llama3:latest`; case-insensitive."""
    name = name.strip().lower()
    if name.startswith("registry.ollama.ai/library/"):
        name = name[len("registry.ollama.ai/library/") :]
    elif name.startswith("library/"):
        name = name[len("library/") :]
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `requests_per_minute` sustained, `burst` at once."""

    requests_per_minute: int
    burst: int


@dataclass(frozen=True)
class Client:
    """A group of callers, known by source network and optionally a token."""

    name: str
    networks: tuple[IPNetwork, ...]
    #: Declared model names (canonical); empty means every declared model.
    models: tuple[str, ...] = ()
    token_sha256: str | None = None
    rate_limit: RateLimit | None = None
    #: May see fleet internals: node names, URLs and addresses, every model,
    #: reload errors (/fleet/*, /metrics, detailed 502/503/504 errors).
    operator: bool = False

    def admits(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in net for net in self.networks)


@dataclass(frozen=True)
class Limits:
    max_body_mb: float = 32.0
    #: Largest transcription upload, in MiB (streamed, or held in memory).
    max_audio_mb: float = 200.0
    request_timeout_s: float = 600.0
    queue_timeout_s: float = 30.0
    #: Requests allowed to wait per node when every slot is busy.
    queue_depth: int = 64
    connect_timeout_s: float = 3.0
    first_byte_timeout_s: float = 120.0
    retries: int = 2


@dataclass(frozen=True)
class HighAvailability:
    """`router.ha`: routers sharing one virtual address through keepalived."""

    virtual_address: str
    interface: str
    #: Every router's own address, most preferred master first.
    peers: tuple[str, ...]
    auth_secret_file: str
    priority: int = 150
    virtual_router_id: int = 51
    advert_interval_s: int = 1
    check_interval_s: int = 1

    def priority_of(self, address: str) -> int:
        """The VRRP priority of the router at `address`: 10 less per place."""
        return max(1, self.priority - 10 * self.peers.index(address))


@dataclass(frozen=True)
class Router:
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    clients: tuple[Client, ...] = ()
    #: When non-empty, node addresses (static or discovered) must fall inside.
    node_networks: tuple[IPNetwork, ...] = ()
    limits: Limits = field(default_factory=Limits)
    ha: HighAvailability | None = None
    #: Host names clients may put in the Host header (lower case, no final
    #: dot), besides addresses and the names herd always accepts.
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class Node:
    name: str
    url: str
    labels: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    max_concurrency: int = 4
    #: The API the node speaks: "ollama" or "openai" (OpenAI-compatible).
    api: str = "ollama"
    #: Where the node's bearer token is read from (shown in plans, status).
    token_file: str | None = None
    #: The token itself, read at load. The leading underscore keeps it out of
    #: plans and every other rendering of the manifest (and repr=False).
    _token: str | None = field(default=None, repr=False)

    @property
    def auth(self) -> dict[str, str] | None:
        """The request headers that authenticate to the node, if it needs any."""
        return {"Authorization": f"Bearer {self._token}"} if self._token else None


@dataclass(frozen=True)
class DiscoveredDefaults:
    """Labels and max_concurrency a discovered node gets (defaults or override)."""

    labels: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    max_concurrency: int | None = None


@dataclass(frozen=True)
class Discovery:
    mdns_enabled: bool = False
    mdns_networks: tuple[IPNetwork, ...] = ()
    #: Path of the fleet key file that signs heartbeats (herd.discovery.fleetkey).
    node_keys: str | None = None
    mdns_interfaces: tuple[str, ...] = ()
    defaults: DiscoveredDefaults = field(default_factory=DiscoveredDefaults)
    overrides: Mapping[str, DiscoveredDefaults] = field(
        default_factory=lambda: _frozen({})
    )
    heartbeat_timeout_s: float = 15.0
    max_clock_skew_s: float = 30.0

    def node_settings(self, name: str) -> tuple[Mapping[str, str], int]:
        """Labels and max_concurrency of the discovered node `name`."""
        override = self.overrides.get(name)
        labels = dict(self.defaults.labels)
        concurrency = self.defaults.max_concurrency
        if override is not None:
            labels.update(override.labels)
            concurrency = override.max_concurrency or concurrency
        return _frozen(labels), concurrency or Node.max_concurrency


@dataclass(frozen=True)
class Placement:
    """Where a model may run: an explicit node list or a label selector."""

    nodes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    replicas: int | None = None

    def matches(self, node: Node) -> bool:
        if self.nodes:
            return node.name in self.nodes
        return all(node.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class Thinking:
    """`models[].thinking`: how the router budgets a thinking model's tokens.

    With `inflate`, a request that caps its output (`num_predict`,
    `max_tokens`) while thinking is on gets `budget_tokens` more, so the
    thinking does not eat the whole cap and leave the answer empty.
    """

    budget_tokens: int = 1024
    inflate: bool = True


@dataclass(frozen=True)
class Model:
    name: str
    aliases: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    place: Placement = field(default_factory=Placement)
    #: Ollama keep_alive to send with requests: "5m", "-1" (forever), "0"...
    keep_loaded: str | None = None
    bundle: str | None = None
    #: Declared thinking budget (None: detected from the node or the name).
    thinking: Thinking | None = None
    #: "chat", "embed", "image" or "transcribe" (declared, else inferred).
    kind: str = "chat"


#: Name fragments that tell a model's kind when the manifest does not.
_KIND_HINTS = (
    ("embed", ("embed",)),
    ("transcribe", ("whisper", "asr")),
    ("image", ("flux", "stable-diffusion", "sdxl", "z-image")),
)


def infer_kind(name: str) -> str:
    """A model's kind from its name: `nomic-embed-text` is embed, `whisper`
    transcribe, `flux` image; anything else chat."""
    lowered = name.lower()
    for kind, hints in _KIND_HINTS:
        if any(hint in lowered for hint in hints):
            return kind
    return "chat"


@dataclass(frozen=True)
class Bundles:
    trusted_signers: str | None = None
    require_scan: bool = True
    store: str | None = None
    scan_command: str | None = None


@dataclass(frozen=True)
class Audit:
    retention_days: int = 90


@dataclass(frozen=True)
class Fleet:
    """One validated manifest. Lookups are precomputed once at load."""

    name: str
    router: Router
    nodes: tuple[Node, ...]
    models: tuple[Model, ...]
    discovery: Discovery = field(default_factory=Discovery)
    bundles: Bundles = field(default_factory=Bundles)
    audit: Audit = field(default_factory=Audit)
    description: str = ""
    _names: Mapping[str, Model] = field(
        default_factory=lambda: _frozen({}), repr=False, compare=False
    )
    _placed: Mapping[str, tuple[Node, ...]] = field(
        default_factory=lambda: _frozen({}), repr=False, compare=False
    )
    _nodes: Mapping[str, Node] = field(
        default_factory=lambda: _frozen({}), repr=False, compare=False
    )
    _urls: Mapping[str, Node] = field(
        default_factory=lambda: _frozen({}), repr=False, compare=False
    )

    def __post_init__(self) -> None:
        names: dict[str, Model] = {}
        for model in self.models:
            names[normalize_model_name(model.name)] = model
            for alias in model.aliases:
                names.setdefault(alias.strip().lower(), model)
                names.setdefault(normalize_model_name(alias), model)
        object.__setattr__(self, "_names", MappingProxyType(names))
        object.__setattr__(self, "_placed", MappingProxyType(self._placements()))
        # First of a name wins, as the old linear search did (names are unique
        # once validated; discovered nodes are appended after static ones).
        by_name: dict[str, Node] = {}
        by_url: dict[str, Node] = {}
        for node in self.nodes:
            by_name.setdefault(node.name, node)
            by_url.setdefault(node.url, node)
        object.__setattr__(self, "_nodes", MappingProxyType(by_name))
        object.__setattr__(self, "_urls", MappingProxyType(by_url))

    def _placements(self) -> dict[str, tuple[Node, ...]]:
        """Every model's nodes, resolved once: label selectors intersect an index
        of (label, value) → node positions instead of testing every node."""
        position = {node.name: i for i, node in enumerate(self.nodes)}
        by_label: dict[tuple[str, str], set[int]] = {}
        for i, node in enumerate(self.nodes):
            for item in node.labels.items():
                by_label.setdefault(item, set()).add(i)
        placed = {}
        for model in self.models:
            if model.place.nodes:
                hits = {position[n] for n in model.place.nodes if n in position}
            else:
                hits = set(range(len(self.nodes)))
                for item in model.place.labels.items():
                    hits &= by_label.get(item, set())
            placed[model.name] = tuple(self.nodes[i] for i in sorted(hits))
        return placed

    def resolve(self, requested: str) -> Model | None:
        """The declared model a request's name (or alias) means, else None."""
        key = requested.strip().lower()
        return self._names.get(key) or self._names.get(normalize_model_name(key))

    def node(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def node_at(self, url: str) -> Node | None:
        """The first node whose URL is `url` (an agent's heartbeat names its
        Ollama by URL: looked up on every beat, whatever the fleet's size)."""
        return self._urls.get(url)

    def nodes_for(self, model: Model) -> tuple[Node, ...]:
        """Nodes the manifest places `model` on, in manifest order."""
        placed = self._placed.get(model.name)
        if placed is None or self._names.get(model.name) is not model:
            return tuple(n for n in self.nodes if model.place.matches(n))
        return placed

    def client_for(
        self, address: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> Client | None:
        """The first client group whose networks contain `address`."""
        return next((c for c in self.router.clients if c.admits(address)), None)


def _networks(values: list[str] | None) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values or ())


def build_fleet(
    doc: Mapping[str, Any], tokens: Mapping[str, str] | None = None
) -> Fleet:
    """Turn a schema-valid manifest document into a `Fleet`.

    Assumes `herd.manifest.schema` validation has passed: missing optional keys
    take the dataclass defaults (which mirror the schema's `default`s; a test
    keeps the two in step). `tokens` are the nodes' bearer tokens by node
    name, read by the loader from their `token_file`s.
    """
    router_doc = doc.get("router") or {}
    limits = Limits(**(router_doc.get("limits") or {}))
    nodes = tuple(
        Node(
            name=n["name"],
            url=n["url"].rstrip("/"),
            labels=_frozen(n.get("labels")),
            max_concurrency=n.get("max_concurrency", Node.max_concurrency),
            api=n.get("api", Node.api),
            token_file=n.get("token_file"),
            _token=(tokens or {}).get(n["name"]),
        )
        for n in doc.get("nodes") or ()
    )
    models = tuple(
        Model(
            name=normalize_model_name(m["name"]),
            aliases=tuple(m.get("aliases") or ()),
            fallbacks=tuple(normalize_model_name(f) for f in m.get("fallbacks") or ()),
            place=Placement(
                nodes=tuple((m.get("place") or {}).get("nodes") or ()),
                labels=_frozen((m.get("place") or {}).get("labels")),
                replicas=(m.get("place") or {}).get("replicas"),
            ),
            keep_loaded=_keep_alive(m.get("keep_loaded")),
            bundle=m.get("bundle"),
            kind=m.get("kind") or infer_kind(m["name"]),
            thinking=_thinking(m.get("thinking")),
        )
        for m in doc.get("models") or ()
    )
    lookup = Fleet(name="", router=Router(), nodes=(), models=models)
    clients = tuple(
        Client(
            name=c["name"],
            networks=_networks(c.get("networks")),
            models=tuple(_canonical(lookup, m) for m in c.get("models") or ()),
            token_sha256=(c.get("token_sha256") or None),
            rate_limit=_rate_limit(c.get("rate_limit")),
            operator=c.get("operator", Client.operator),
        )
        for c in router_doc.get("clients") or ()
    )
    mdns = (doc.get("discovery") or {}).get("mdns") or {}
    disc = doc.get("discovery") or {}
    discovery = Discovery(
        mdns_enabled=bool(mdns.get("enabled", False)),
        mdns_networks=_networks(mdns.get("networks")),
        node_keys=disc.get("node_keys"),
        mdns_interfaces=tuple(mdns.get("interfaces") or ()),
        defaults=_discovered(mdns.get("defaults")),
        overrides=_frozen(
            {k: _discovered(v) for k, v in (mdns.get("nodes") or {}).items()}
        ),
        heartbeat_timeout_s=float(
            disc.get("heartbeat_timeout_s", Discovery.heartbeat_timeout_s)
        ),
        max_clock_skew_s=float(
            disc.get("max_clock_skew_s", Discovery.max_clock_skew_s)
        ),
    )
    b = doc.get("bundles") or {}
    bundles = Bundles(
        trusted_signers=b.get("trusted_signers"),
        require_scan=b.get("require_scan", Bundles.require_scan),
        store=b.get("store"),
        scan_command=b.get("scan_command"),
    )
    router = Router(
        listen=router_doc.get("listen", Router.listen),
        clients=clients,
        node_networks=_networks(router_doc.get("node_networks")),
        limits=limits,
        ha=_ha(router_doc.get("ha")),
        hostnames=tuple(
            h.lower().rstrip(".") for h in router_doc.get("hostnames") or ()
        ),
    )
    audit = Audit(**(doc.get("audit") or {}))
    return Fleet(
        name=(doc.get("metadata") or {})["name"],
        description=(doc.get("metadata") or {}).get("description", ""),
        router=router,
        nodes=nodes,
        models=models,
        discovery=discovery,
        bundles=bundles,
        audit=audit,
    )


def _canonical(lookup: Fleet, name: str) -> str:
    model = lookup.resolve(name)
    return model.name if model else normalize_model_name(name)


def _discovered(doc: Mapping[str, Any] | None) -> DiscoveredDefaults:
    doc = doc or {}
    return DiscoveredDefaults(
        labels=_frozen(doc.get("labels")), max_concurrency=doc.get("max_concurrency")
    )


def _ha(doc: Mapping[str, Any] | None) -> HighAvailability | None:
    if not doc:
        return None
    return HighAvailability(**{**doc, "peers": tuple(doc["peers"])})


def _rate_limit(doc: Mapping[str, Any] | None) -> RateLimit | None:
    if not doc:
        return None
    rpm = doc["requests_per_minute"]
    return RateLimit(requests_per_minute=rpm, burst=doc.get("burst", rpm))


def _thinking(doc: Mapping[str, Any] | None) -> Thinking | None:
    if doc is None:
        return None
    return Thinking(
        budget_tokens=doc.get("budget_tokens", Thinking.budget_tokens),
        inflate=doc.get("inflate", Thinking.inflate),
    )


def _keep_alive(value: Any) -> str | None:
    """`keep_loaded: true` pins the model (-1); a string is an Ollama duration."""
    if value is None or value is False:
        return None
    if value is True:
        return "-1"
    return str(value)
