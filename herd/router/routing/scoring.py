"""Choosing a node for a request: one pure function over frozen facts.

`choose_node(request, candidates)` ranks the nodes the manifest places a model
on, using only what the caller observed (health, loaded models, in-flight
counts, latency EWMAs, recent errors). It imports nothing that does I/O, so
every decision can be replayed and explained in a test.

Weights, in order of importance: a model already loaded in memory beats one
that must be read from disk (seconds of load time), a free slot beats a queue,
recent errors push a node down, then latency (time to first token) and speed.
Ties break on the node name so identical inputs always give the same answer.

Memory fit (from what a `herd node` agent reports): a model that is not loaded
and is larger than the node's available memory (RAM plus free GPU memory) is
not sent there cold; a node that is swapping or under memory pressure ranks
lower. Labels a client asks for (`X-Herd-Prefer: key=value,...`) add a
bonus, but never override placement or health.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

LOADED = 1000.0
UNKNOWN_DISK = 40.0
FREE_SLOT = 300.0
LOAD_PENALTY = 200.0
ERROR_PENALTY = 400.0
TTFT_PENALTY_MAX = 100.0
TPS_BONUS_MAX = 50.0
PREFER_BONUS = 150.0
SWAP_PENALTY = 250.0
#: Swap traffic (bytes/s in + out) above which a node counts as swapping.
SWAP_BYTES_PER_S = 1024 * 1024
#: Points per percent of memory pressure (PSI some avg10).
PRESSURE_PENALTY = 3.0
GB = 1024**3


#: No labels (an immutable default).
NO_LABELS: Mapping[str, str] = MappingProxyType({})


class Candidate(NamedTuple):
    """What the router knows about one node for one model, right now.

    A named tuple (immutable, like a frozen dataclass) because one is built
    per node for every request: a tuple costs a fraction of a frozen
    dataclass's field-by-field `object.__setattr__`."""

    node: str
    #: True up, False down, None not polled yet.
    up: bool | None
    #: Model is loaded in memory (from /api/ps), on disk (from /api/tags);
    #: None when not known yet.
    loaded: bool
    on_disk: bool | None
    in_flight: int
    max_concurrency: int
    waiting: int = 0
    #: Exponentially weighted time to first token (ms) and tokens/s, if seen.
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    #: Recent error rate in [0, 1] (EWMA over outcomes).
    error_rate: float = 0.0
    labels: Mapping[str, str] = NO_LABELS
    #: Bytes the model needs (its size from /api/tags or /api/ps), if known.
    model_bytes: int | None = None
    #: Bytes free for a cold load (RAM available + GPU free), from the agent.
    memory_available: int | None = None
    #: Swap traffic in bytes/s and memory pressure (%), from the agent.
    swap_per_s: float = 0.0
    memory_pressure: float | None = None

    def memory_short(self) -> bool:
        """Cold, and larger than the memory the node has free."""
        return (
            not self.loaded
            and self.model_bytes is not None
            and self.memory_available is not None
            and self.model_bytes > self.memory_available
        )


@dataclass(frozen=True)
class RouteRequest:
    """The parts of a request that matter for placement."""

    model: str
    #: Labels the caller would like (soft preference; placement is the
    #: manifest's): the `X-Herd-Prefer: key=value,...` request header.
    prefer_labels: Mapping[str, str] = field(default_factory=dict)


def parse_prefer(header: str | None) -> Mapping[str, str]:
    """`X-Herd-Prefer: gpu=a100,room=b2` as labels; ValueError when malformed."""
    if not header:
        return {}
    labels = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip() or not value.strip() or len(item) > 128:
            raise ValueError(
                "X-Herd-Prefer must be label=value pairs separated by commas"
            )
        labels[key.strip()] = value.strip()
    return labels


class Ranked(NamedTuple):
    node: str
    score: float
    candidate: Candidate

    @property
    def reason(self) -> str:
        return reason(self.candidate)


class Decision(NamedTuple):
    """Nodes to try, best first, and the ones left out with why.

    A named tuple (immutable) because one is made for every request."""

    model: str
    ranked: tuple[Ranked, ...]
    excluded: tuple[tuple[str, str], ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        ranked = self.ranked
        if len(ranked) == 1:
            return (ranked[0][0],)
        return tuple(r.node for r in ranked)

    @property
    def memory_decided(self) -> bool:
        """Memory fit left a node out or pushed one down."""
        return any(why.startswith("memory:") for _, why in self.excluded) or any(
            r.candidate.swap_per_s > SWAP_BYTES_PER_S or r.candidate.memory_pressure
            for r in self.ranked
        )

    def explain(self) -> str:
        parts = [f"{r.node}={r.score:.0f} ({r.reason})" for r in self.ranked]
        parts += [f"{name} excluded ({why})" for name, why in self.excluded]
        return "; ".join(parts)


def score(request: RouteRequest, c: Candidate) -> float:
    """The score of one eligible candidate (higher is better)."""
    total = LOADED if c.loaded else UNKNOWN_DISK if c.on_disk is None else 0.0
    capacity = c.max_concurrency if c.max_concurrency > 0 else 1
    if c.in_flight < capacity:
        total += FREE_SLOT
    total -= LOAD_PENALTY * (c.in_flight + c.waiting) / capacity
    if c.error_rate > 0:
        total -= ERROR_PENALTY * min(c.error_rate, 1.0)
    if c.ttft_ms is not None:
        total -= min(c.ttft_ms / 20.0, TTFT_PENALTY_MAX)
    if c.tokens_per_s is not None:
        total += min(c.tokens_per_s / 2.0, TPS_BONUS_MAX)
    if c.swap_per_s > SWAP_BYTES_PER_S:
        total -= SWAP_PENALTY
    if c.memory_pressure:
        total -= PRESSURE_PENALTY * min(c.memory_pressure, 100.0)
    if request.prefer_labels and all(
        c.labels.get(k) == v for k, v in request.prefer_labels.items()
    ):
        total += PREFER_BONUS
    return total


def reason(c: Candidate) -> str:
    """Why a candidate scored what it did, in a few words (for explain())."""
    parts = [
        "loaded" if c.loaded else "disk unknown" if c.on_disk is None else "on disk"
    ]
    if c.in_flight >= max(c.max_concurrency, 1):
        parts.append("full")
    parts.append(f"{c.in_flight}/{max(c.max_concurrency, 1)} busy")
    if c.error_rate > 0:
        parts.append(f"errors {c.error_rate:.2f}")
    if c.ttft_ms is not None:
        parts.append(f"ttft {c.ttft_ms:.0f}ms")
    if c.swap_per_s > SWAP_BYTES_PER_S:
        parts.append("swapping")
    if c.memory_pressure:
        parts.append(f"memory pressure {c.memory_pressure:.0f}%")
    return ", ".join(parts)


def memory_reason(c: Candidate) -> str:
    return (
        f"memory: model needs {(c.model_bytes or 0) / GB:.1f} GB, "
        f"{(c.memory_available or 0) / GB:.1f} GB free"
    )


def _rank_key(entry: tuple[float, int, str, Candidate]) -> tuple[float, int, str]:
    return entry[0], entry[1], entry[2]


def choose_node(request: RouteRequest, candidates: tuple[Candidate, ...]) -> Decision:
    """Rank the candidates able to serve `request.model`, best first.

    A node that is down, or up but known not to hold the model, is excluded. A
    node not polled yet is kept (ranked low) so a fresh router serves at once.
    """
    if len(candidates) == 1:
        # The common placement (a model on one node), without lists or a sort,
        # and its tuples made whole (a named tuple's own constructor is a
        # Python call each).
        c = candidates[0]
        why = _left_out(c)
        if why is None:
            ranked = _new(Ranked, (c.node, score(request, c), c))
            return _new(Decision, (request.model, (ranked,), ()))
        return Decision(request.model, (), ((c.node, why),))
    ranked: list[tuple[float, int, str, Candidate]] = []
    excluded: list[tuple[str, str]] = []
    for c in candidates:
        why = _left_out(c)
        if why is not None:
            excluded.append((c.node, why))
            continue
        ranked.append((-score(request, c), c.in_flight, c.node, c))
    if len(ranked) > 1:
        ranked.sort(key=_rank_key)
    return Decision(
        request.model,
        tuple(Ranked(node, -neg, c) for neg, _, node, c in ranked),
        tuple(excluded),
    )


_new = tuple.__new__


def _left_out(c: Candidate) -> str | None:
    """Why a candidate cannot serve at all, or None when it can."""
    if c.up is False:
        return "down"
    if c.up and c.on_disk is False and not c.loaded:
        return "model not on node"
    # (memory_available is None for a node without an agent: the common case.)
    if c.memory_available is not None and c.memory_short():
        return memory_reason(c)
    return None
