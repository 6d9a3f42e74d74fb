"""Prometheus metrics: what the router counts, and the /metrics exposition.

Counting happens at one place, when a request finishes (`Metrics.request`,
called with the request's trace and access line): every request, refused ones
included, is counted by route, model, node, client group and status, at once
(every scrape sees every finished request). That count lives in the fleet
state every worker maps (herd.router.fleetstate, one word per label
combination and worker: adding one is a memory write, where
prometheus_client's multiprocess value takes a lock, a getpid and a struct
write) and is read back into `herd_requests_total` at scrape time.
Histogram observations and token counts are kept in memory per label
combination and written every SAMPLE_S (herd.router.observe.batched: a scrape
may see them up to a second late). What a
worker holds rather than counts (traces not yet written, whether the last
reload was refused) is sampled by a background greenlet every SAMPLE_S and
again by the worker answering a scrape. In-flight and waiting requests per
node are read at scrape time from the fleet state every worker shares
(herd.router.fleetstate), like node health.

Under gunicorn each worker writes its values to prometheus_client's
multiprocess files (see herd.router.observe.multiproc), and a scrape adds up every
worker's counts: with `--workers 4` the totals are the router's totals. In a
single process (tests, the app built directly) the values live in memory.

Label values are bounded by the manifest: `model` is a declared model's name
(an alias counts as its model; anything else is "other"), `node` a node
name, `group` a client group ("node" for nodes pulling from the registry,
empty when the caller was refused before a group was known), `route` a
route template or "(unrouted)". Per request the cost is a dict lookup, one
write to the fleet state and a few in-memory additions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from herd.router.fleetstate import ROWS, FleetState
from herd.router.observe.batched import Batched, BatchedCount
from herd.router.observe.exposition import (
    SEP,
    Filtered,
    Live,
    node_families,
    requests_family,
)
from herd.router.observe.multiproc import ENV

__all__ = ["CONTENT_TYPE", "Metrics", "node_families"]

log = logging.getLogger("herd.router")

#: The exposition format /metrics answers in.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: How often each worker samples its gauges (seconds).
SAMPLE_S = 1.0
#: Time to first token and request duration buckets (seconds).
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
#: Label combinations kept before new routes are folded into "(other)".
MAX_SERIES = 5000
#: error_class values that are ACL refusals (herd.errors class names).
ACL_REFUSALS = {
    "Forbidden": "forbidden",
    "Unauthorized": "unauthorized",
    "ModelNotAllowed": "model_not_allowed",
}

# `_created` series double every counter and histogram and no dashboard uses them.
disable_created_metrics()


class _Children:
    """What one label combination updates: the request counter at once, the
    histograms and token counters in memory (flushed every SAMPLE_S)."""

    __slots__ = ("cell", "duration", "ttft", "tokens_in", "tokens_out", "extra")

    def __init__(self, metrics: Metrics, key: tuple[str, str, str, str, str, int]):
        route, requested, model, node, group, status = key
        m = metrics
        state = m.state
        labels = SEP.join((route, model, node, group, str(status)))
        #: This worker's count of the combination in the fleet state.
        self.cell = state.series(labels) * ROWS + state.row
        self.duration = Batched(m.duration.labels(route, model), DURATION_BUCKETS)
        self.ttft = self.tokens_in = self.tokens_out = None
        if node:
            self.ttft = Batched(m.ttft.labels(model, node), TTFT_BUCKETS)
            self.tokens_in = BatchedCount(m.tokens_in.labels(model, node, group))
            self.tokens_out = BatchedCount(m.tokens_out.labels(model, node, group))
        #: Counters that go up by one per request of this combination.
        extra = []
        if requested and model and requested != model:
            extra.append(m.fallbacks.labels(requested, model))
        self.extra = tuple(extra)


class Metrics:
    """The router's metric families (one instance per Runtime)."""

    def __init__(
        self, multiproc_dir: str | None = None, state: FleetState | None = None
    ) -> None:
        self.dir = multiproc_dir if multiproc_dir is not None else os.environ.get(ENV)
        #: Where herd_requests_total is counted (every worker's, when shared).
        self.state = state if state is not None else FleetState()
        self._cells = self.state.series_cells
        self.registry = reg = CollectorRegistry(auto_describe=False)
        self.duration = Histogram(
            "herd_request_duration_seconds",
            "Time from a request's arrival to its last byte, by route and model.",
            ("route", "model"),
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "herd_time_to_first_token_seconds",
            "Time from a request's arrival to the node's first answer line.",
            ("model", "node"),
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self.tokens_in = Counter(
            "herd_tokens_in_total",
            "Prompt tokens nodes evaluated (prompt_eval_count).",
            ("model", "node", "group"),
            registry=reg,
        )
        self.tokens_out = Counter(
            "herd_tokens_out_total",
            "Tokens nodes generated (eval_count).",
            ("model", "node", "group"),
            registry=reg,
        )
        self.retries = Counter(
            "herd_retries_total",
            "Attempts on another node after one failed before its first byte.",
            ("model",),
            registry=reg,
        )
        self.fallbacks = Counter(
            "herd_fallbacks_total",
            "Requests served by a fallback model instead of the one requested.",
            ("requested_model", "model"),
            registry=reg,
        )
        self.acl_refused = Counter(
            "herd_acl_refusals_total",
            "Requests refused by the client ACL: address in no group "
            "(forbidden), bad or missing token (unauthorized), model not "
            "allowed for the group (model_not_allowed).",
            ("group", "reason"),
            registry=reg,
        )
        self.rate_limited = Counter(
            "herd_rate_limit_refusals_total",
            "Requests refused because the client group is over its rate limit.",
            ("group",),
            registry=reg,
        )
        self.upstream_failures = Counter(
            "herd_upstream_failures_total",
            "Node failures: no connection, timeout, error status or broken stream.",
            ("node",),
            registry=reg,
        )
        self.traces_written = Counter(
            "herd_traces_written_total",
            "Trace rows written to traces.db.",
            registry=reg,
        )
        self.traces_dropped = Counter(
            "herd_traces_dropped_total",
            "Trace rows dropped because the buffer was full.",
            registry=reg,
        )
        self.traces_write_failures = Counter(
            "herd_traces_write_failures_total",
            "Failed attempts to write buffered trace rows (they are retried).",
            registry=reg,
        )
        self.traces_pending = Gauge(
            "herd_traces_pending",
            "Trace rows buffered in memory, not yet written (all workers).",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.refusals_unrecorded = Counter(
            "herd_refusals_unrecorded_total",
            "Refused requests (4xx before any node) counted but not traced: over "
            "the trace budget for refusals.",
            registry=reg,
        )
        self.reload_errors = Counter(
            "herd_reload_errors_total",
            "Manifest revisions refused on reload (once per revision, all workers).",
            registry=reg,
        )
        self.reload_failing = Gauge(
            "herd_reload_failing",
            "1 while the newest applied revision is refused and an older one "
            "is served, else 0.",
            multiprocess_mode="livemax",
            registry=reg,
        )
        self._children: dict[tuple[str, str, str, str, str, int], _Children] = {}
        self._names: dict[str, str] = {}
        self._nodes: frozenset[str] = frozenset()
        self._sampled: dict[str, float] = {}
        #: Requests that could not be counted (logged once).
        self.lost = 0
        #: Batched histogram and token values waiting for `flush`.
        self._dirty: list[Any] = []

    # -- manifest -------------------------------------------------------------

    def configure(self, fleet: Any) -> None:
        """A (new) revision: which models and nodes are label values."""
        names = {}
        for model in fleet.models:
            names[model.name] = model.name
            for alias in model.aliases:
                names.setdefault(alias, model.name)
        self._names = names
        self._nodes = frozenset(n.name for n in fleet.nodes)

    # -- per request ----------------------------------------------------------

    def request(self, outcome: Any, duration_s: float) -> None:
        """Count one finished request (called once per request). Never raises:
        a metrics file that cannot grow (disk full) loses counts, not requests."""
        try:
            self._count(outcome, duration_s)
        except Exception:  # noqa: BLE001 - counting must never fail a request
            self.lost += 1
            if self.lost == 1:
                log.exception("counting a request for /metrics failed")

    def _count(self, outcome: Any, duration_s: float) -> None:
        # A declared name or alias counts as its model; any other as "other".
        names = self._names
        requested = outcome.requested_model
        requested = names.get(requested, "other") if requested else ""
        served = outcome.served_model
        key = (
            outcome.route,
            requested,
            names.get(served, "other") if served else requested,
            outcome.node or "",
            outcome.client or "",
            outcome.status,
        )
        children = self._children.get(key)
        if children is None:
            children = self._add(key)
        self._cells[children.cell] += 1
        dirty = self._dirty
        children.duration.observe(duration_s, dirty)
        for counter in children.extra:
            counter.inc()
        if children.ttft is not None:
            if outcome.ttft_ms is not None:
                children.ttft.observe(outcome.ttft_ms / 1000.0, dirty)
            if outcome.tokens_in:
                children.tokens_in.inc(outcome.tokens_in, dirty)
            if outcome.tokens_out:
                children.tokens_out.inc(outcome.tokens_out, dirty)
        if outcome.retries:
            self.retries.labels(key[2]).inc(outcome.retries)
        if outcome.status in (401, 403):
            reason = ACL_REFUSALS.get(outcome.error_class or "")
            if reason:
                self.acl_refused.labels(key[4], reason).inc()
        elif outcome.status == 429 and outcome.error_class == "RateLimited":
            self.rate_limited.labels(key[4]).inc()

    def _add(self, key: tuple[str, str, str, str, str, int]) -> _Children:
        route = key[0]
        if route != "(unrouted)" and len(self._children) >= MAX_SERIES:
            key = ("(other)", *key[1:])
            found = self._children.get(key)
            if found is not None:
                return found
        children = self._children[key] = _Children(self, key)
        return children

    def upstream_failure(self, node: str) -> None:
        self.upstream_failures.labels(node).inc()

    # -- sampled --------------------------------------------------------------

    def flush(self) -> None:
        """Write the batched histogram and token values (sampler, scrape, exit)."""
        dirty, self._dirty = self._dirty, []
        for batched in dirty:
            batched.flush()

    def sample(
        self, queues: Any, traces: Any, source: Any, unrecorded: int = 0
    ) -> None:
        """Copy this worker's gauges and the counters other modules keep, and
        write the batched values."""
        self.flush()
        self.traces_pending.set(traces.pending)
        self.reload_failing.set(1 if getattr(source, "last_error", None) else 0)
        self._advance("written", traces.written, self.traces_written)
        self._advance("dropped", traces.dropped, self.traces_dropped)
        self._advance("failures", traces.write_failures, self.traces_write_failures)
        self._advance("reload", getattr(source, "refusals", 0), self.reload_errors)
        self._advance("unrecorded", unrecorded, self.refusals_unrecorded)

    def _advance(self, name: str, total: float, counter: Counter) -> None:
        """Add what `total` (a plain counter) grew by since the last sample."""
        delta = total - self._sampled.get(name, 0)
        if delta > 0:
            counter.inc(delta)
            self._sampled[name] = total

    def run(self, stopped: Callable[[], bool], sample: Callable[[], None]) -> None:
        """Call `sample` every SAMPLE_S until `stopped()` (a background greenlet)."""
        import gevent

        while not stopped():
            try:
                sample()
            except Exception:  # noqa: BLE001 - the sampler must never die
                log.exception("sampling metrics failed")
            gevent.sleep(SAMPLE_S)

    # -- exposition -----------------------------------------------------------

    def render(self, live: Callable[[], Iterable[Metric]]) -> bytes:
        """The text exposition: every worker's counts plus `live()` families
        (what the answering worker knows first-hand, such as node health)."""
        self.flush()
        registry = CollectorRegistry(auto_describe=False)
        inner = MultiProcessCollector(None, self.dir) if self.dir else self.registry
        registry.register(Filtered(inner, lambda: self._nodes))
        registry.register(Live(lambda: [requests_family(self.state), *live()]))
        return generate_latest(registry)
