"""The router's live state and the steps every forwarded request shares.

`Runtime` ties the collaborators together: the manifest source (hot reload),
health poller, queues, stats, rate limiter, upstream pools and trace log. The
resources call its small steps (read the body, resolve the model, finish the
request); background greenlets (poller, trace flusher, reload watcher) start
on the first request or from gunicorn's `post_worker_init`, never at import.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from herd.digits import decimal
from herd.discovery.static import StaticPoller
from herd.errors import BodyTooLarge, InvalidRequest, ModelNotFound
from herd.manifest.model import Client, Fleet, Model
from herd.router.api.body import parse_object
from herd.router.fleetstate import (
    TRACES_DROPPED,
    TRACES_PENDING,
    TRACES_WRITTEN,
    UNRECORDED,
    WRITE_FAILURES,
    FleetState,
)
from herd.router.http.httphead import MAX_LENGTH_DIGITS
from herd.router.observe.accesslog import AccessLog
from herd.router.observe.metrics import Metrics, node_families
from herd.router.observe.traces import TraceLog, row
from herd.router.policy import Policy, RateLimiter
from herd.router.reload import Served
from herd.router.routing.forward import Forwarder, Opened, Outcome
from herd.router.routing.proxy import Upstream
from herd.router.routing.queues import Queues
from herd.router.routing.stats import Stats

log = logging.getLogger("herd.router")

RELOAD_CHECK_S = 0.5
#: Longest model name a request may give. Ollama's own longest name (host,
#: namespace, model and tag at their limits) is about 600 characters; every
#: name a manifest can declare, with a `registry.ollama.ai/library/` prefix,
#: is under 400.
MODEL_NAME_MAX = 512
#: Refused requests (4xx before any node) traced and logged per second,
#: beyond a burst; the rest are only counted (herd_refusals_unrecorded_total).
REFUSALS_PER_S = 20.0
REFUSALS_BURST = 200
#: Model chains (`Runtime.models_for`) kept per revision before starting over:
#: names are the caller's, so the table is bounded.
CHAINS_MAX = 4096


def check_model_name(requested: Any) -> None:
    """Refuse (400) a missing model name, one over MODEL_NAME_MAX, or one with
    control or other non-printable characters (no model is named so)."""
    if not isinstance(requested, str) or not requested.strip():
        raise InvalidRequest("model is required")
    if len(requested) > MODEL_NAME_MAX:
        raise InvalidRequest(
            f"model: name of {len(requested)} characters is longer than "
            f"{MODEL_NAME_MAX}, the longest herd accepts"
        )
    if not requested.isprintable():
        raise InvalidRequest(
            "model: name contains a control or non-printable character"
        )


class RefusalBudget:
    """A token bucket for recording refused requests (one for the process)."""

    def __init__(self, per_s: float = REFUSALS_PER_S, burst: int = REFUSALS_BURST):
        self.per_s = per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None
        #: Refused requests neither traced nor logged (over the budget).
        self.unrecorded = 0

    def take(self, now: float) -> bool:
        if self._stamp is not None:
            self._tokens = min(
                self.burst, self._tokens + (now - self._stamp) * self.per_s
            )
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.unrecorded += 1
        return False


class Runtime:
    """Everything a request needs beyond the manifest itself."""

    def __init__(
        self,
        source: Any,
        traces: TraceLog,
        upstream: Upstream,
        clock: Callable[[], float] = time.time,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        poller: StaticPoller | None = None,
        background: bool = True,
        access: AccessLog | None = None,
        state: FleetState | None = None,
    ):
        #: Slots, queues, buckets, counters and health shared by every worker.
        self.state = state if state is not None else FleetState.attach()
        self.source = source
        self.traces = traces
        self.upstream = upstream
        self.clock = clock
        self.monotonic = monotonic
        self.poller = poller or StaticPoller(
            lambda: self.source.current().fleet, upstream, clock
        )
        share = getattr(self.poller, "share", None)
        if share is not None:
            share(self.state)
        self.queues = Queues(monotonic, self.state)
        self.metrics = Metrics(state=self.state)
        self.stats = Stats(on_failure=self.metrics.upstream_failure, state=self.state)
        self.limiter = RateLimiter(monotonic, self.state)
        self.refusals = RefusalBudget()
        self.forwarder = Forwarder(
            health=self.poller,
            queues=self.queues,
            stats=self.stats,
            upstream=upstream,
            clock=monotonic,
        )
        self.access = access
        self.started_at = clock()
        self._background = background
        self._started = False
        #: Whether `ensure_started` has work left (read on every request).
        self.starting = background
        self._stopping = False
        self._greenlets: list[Any] = []
        #: Extra background loops `fn(stopped)` (e.g. mDNS), started with the rest.
        self.services: list[Callable[[Callable[[], bool]], None]] = []
        self.on_stop: list[Callable[[], None]] = []
        self._trace_writer: Any = None
        self._policy: Policy | None = None
        self._chains_fleet: Fleet | None = None
        self._chains: dict[tuple[int, str], tuple[Client, tuple[Model, ...]]] = {}
        self._node_urls: frozenset[str] = frozenset()
        source.listeners.append(self._apply)
        self._apply(source.current())

    # -- manifest ------------------------------------------------------------

    def _apply(self, served: Served) -> None:
        """A (new) revision: resize queues, re-allow node URLs, drop old pools."""
        fleet = served.fleet
        self._node_urls = frozenset(n.url for n in fleet.nodes)
        # The set's own (C) test, asked for every request sent to a node: a
        # lambda reading the attribute cost a Python call each time.
        self.upstream.set_allow(self._node_urls.__contains__)
        self.metrics.configure(fleet)
        self.queues.configure(
            ((n.name, n.max_concurrency) for n in fleet.nodes),
            fleet.router.limits.queue_depth,
        )
        self.upstream.forget(lambda url: url in self._node_urls)

    def served(self) -> Served:
        return self.source.current()

    def policy(self, fleet: Fleet) -> Policy:
        # Compared by identity with the fleet it was built for (held by the
        # Policy), never by id(): a new revision can never get an old policy.
        cached = self._policy
        if cached is None or cached.fleet is not fleet:
            cached = self._policy = Policy(fleet)
        return cached

    # -- background ----------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the background greenlets once, inside the worker process."""
        if self._started or not self._background:
            return
        self._started = True
        self.starting = False
        import gevent

        stopped = self._is_stopping
        self._greenlets = [
            gevent.spawn(self.poller.run, stopped),
            gevent.spawn(self._watch, stopped),
        ]
        self._trace_writer = gevent.spawn(self.traces.run, stopped)
        if self.access is not None:
            self._greenlets.append(gevent.spawn(self.access.run, stopped))
        self._greenlets.append(
            gevent.spawn(self.metrics.run, stopped, self.sample_metrics)
        )
        self._greenlets += [gevent.spawn(service, stopped) for service in self.services]

    def _is_stopping(self) -> bool:
        return self._stopping

    def _watch(self, stopped: Callable[[], bool]) -> None:
        import gevent

        while not stopped():
            try:
                self.source.check()
            except Exception:  # noqa: BLE001 - the watcher must never die
                log.exception("checking for a new manifest revision failed")
            gevent.sleep(RELOAD_CHECK_S)

    def stop(self) -> None:
        """Stop background work and write the last traces (worker exit)."""
        self._stopping = True
        for hook in self.on_stop:
            hook()  # e.g. mDNS goodbye, before its greenlet is killed
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        if self._trace_writer is not None:
            # The writer notices the flag within FLUSH_S, writes the rest
            # and closes the database.
            self._trace_writer.join(timeout=10)
        self.traces.close()
        if self.access is not None:
            self.access.flush()
        self.metrics.flush()
        self.upstream.close()

    # -- metrics ---------------------------------------------------------------

    def sample_metrics(self) -> None:
        """This worker's gauges (queues, trace buffer, reload) into the metrics."""
        self.metrics.sample(
            self.queues, self.traces, self.source, self.refusals.unrecorded
        )
        self.share_counts()

    def share_counts(self) -> None:
        """This worker's trace counts into the fleet state (/fleet/status
        shows every worker's)."""
        state, traces = self.state, self.traces
        state.set(TRACES_WRITTEN, traces.written)
        state.set(TRACES_DROPPED, traces.dropped)
        state.set(WRITE_FAILURES, traces.write_failures)
        state.set(UNRECORDED, self.refusals.unrecorded)
        state.set(TRACES_PENDING, traces.pending)

    def shared_counts(self) -> dict[str, int]:
        """Every worker's trace counts (this worker's as of now)."""
        self.share_counts()
        total = self.state.total
        return {
            "written": total(TRACES_WRITTEN),
            "pending": total(TRACES_PENDING),
            "dropped": total(TRACES_DROPPED),
            "refusals_unrecorded": total(UNRECORDED),
            "write_failures": total(WRITE_FAILURES),
        }

    def metrics_text(self, fleet: Fleet) -> bytes:
        """The /metrics exposition: every worker's counts, this worker's view
        of node health."""
        self.sample_metrics()
        poller = self.poller
        queues = self.queues
        nodes = [
            (
                n.name,
                poller.get(n).up,
                n.max_concurrency,
                queues.in_flight(n.name),
                queues.waiting(n.name),
            )
            for n in fleet.nodes
        ]
        return self.metrics.render(lambda: node_families(nodes))

    # -- request steps -------------------------------------------------------

    def read_json(self, req: Any, fleet: Fleet) -> tuple[dict[str, Any], bytes]:
        """The request body as a JSON object (parsed by herd.router.api.body),
        refusing bodies over max_body_mb."""
        limit = int(fleet.router.limits.max_body_mb * 1024 * 1024)
        # The router's worker passes a checked decimal CONTENT_LENGTH: read it
        # from the environ; anything else gets falcon's checks (and errors).
        text = req.env.get("CONTENT_LENGTH")
        length = decimal(text, MAX_LENGTH_DIGITS) if text else None
        if length is None:
            length = req.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(
                f"request body of {length} bytes is over the limit of "
                f"{fleet.router.limits.max_body_mb:g} MB"
            )
        # A server that sets wsgi.input_terminated (the router's worker, which
        # also de-chunks) ends its input stream where the body ends: read it
        # directly, without falcon's bounding wrapper.
        terminated = req.env.get("wsgi.input_terminated")
        raw = (req.stream if terminated else req.bounded_stream).read(limit + 1)
        if len(raw) > limit:
            raise BodyTooLarge(
                "request body is over the limit of "
                f"{fleet.router.limits.max_body_mb:g} MB"
            )
        # (Not `raw.strip()`: that copies the whole body to test it.)
        if not raw or raw.isspace():
            raise InvalidRequest("missing request body")
        # Strict: refused wherever a node could read the bytes differently.
        return parse_object(raw), raw

    def models_for(
        self,
        fleet: Fleet,
        client: Client,
        requested: Any,
        extra_fallbacks: Any = None,
    ) -> tuple[Model, ...]:
        """The declared model a request names, then its fallbacks, in order.

        Manifest `fallbacks` come first, then the request's `fallback_models`
        (each must be declared). Fallbacks the client may not use are skipped.
        Without `fallback_models` the answer depends only on the revision,
        the client group and the name: it is kept per revision (refusals are
        not kept; they are worked out again each time).
        """
        if extra_fallbacks is not None or requested.__class__ is not str:
            return _chain(fleet, client, requested, extra_fallbacks)
        if self._chains_fleet is not fleet:
            self._chains_fleet, self._chains = fleet, {}
        chains = self._chains
        key = (id(client), requested)
        kept = chains.get(key)
        # The entry holds its client, so no other object can have its id.
        if kept is not None and kept[0] is client:
            return kept[1]
        chain = _chain(fleet, client, requested, None)
        if len(chains) >= CHAINS_MAX:
            chains.clear()
        chains[key] = (client, chain)
        return chain

    def deadline(self, fleet: Fleet) -> float:
        return self.monotonic() + fleet.router.limits.request_timeout_s

    def finish(self, opened: Opened, outcome: Outcome, error: str | None) -> None:
        """End of a forwarded request: free the slot, learn, trace, log (once)."""
        opened.release()
        if outcome.finished:
            return
        now = self.monotonic()
        # Token counts come from the node's answer: only counts are kept.
        tokens_out = _keep_counts(outcome)
        if error in ("stream_broken", "node_error"):
            self.stats.failure(opened.node.name)
        elif outcome.status < 500:
            self.poller.report_served(opened.node.name)
            gen = now - (opened.sent_at or outcome.started)
            ttft = None
            if outcome.ttft_ms is not None:
                ttft = outcome.ttft_ms - (opened.sent_at - outcome.started) * 1000.0
            self.stats.success(
                opened.node.name, opened.model.name, ttft, tokens_out, gen
            )
        if error and not outcome.error_class:
            outcome.error_class = error
        self.record(outcome, now)

    def refusal_recorded(self, now: float) -> bool:
        """Whether one more refused request may be traced and logged (within
        `refusals`' budget); if not, the access log counts it as left out."""
        if self.refusals.take(now):
            return True
        if self.access is not None:
            self.access.unlogged()
        return False

    def record(self, outcome: Outcome, now: float | None = None) -> None:
        """Trace and log one finished request (`now`: the end, on the
        monotonic clock, if the caller has just read it). Refusals that never
        reached a node (4xx) are recorded within `refusals`' budget and
        otherwise only counted, so a flood of bad requests cannot fill the
        disk."""
        outcome.finished = True
        if now is None:
            now = self.monotonic()
        self.metrics.request(outcome, now - outcome.started)
        if (
            outcome.node is None
            and 400 <= outcome.status < 500
            and not self.refusal_recorded(now)
        ):
            return
        trace = row(outcome, now)
        self.traces.record(trace)
        if self.access is not None:
            self.access.request(trace)


def _chain(
    fleet: Fleet, client: Client, requested: Any, extra_fallbacks: Any
) -> tuple[Model, ...]:
    """`Runtime.models_for`, worked out."""
    check_model_name(requested)
    model = fleet.resolve(requested)
    if model is None:
        raise ModelNotFound(f"model '{requested}' not found")
    Policy.check_model(client, model)
    names: list[str] = list(model.fallbacks)
    if extra_fallbacks is not None:
        if not isinstance(extra_fallbacks, list) or not all(
            isinstance(n, str) for n in extra_fallbacks
        ):
            raise InvalidRequest("fallback_models must be a list of model names")
        for name in extra_fallbacks:
            if fleet.resolve(name) is None:
                raise InvalidRequest(
                    f"fallback_models: model '{name}' is not declared in the fleet"
                )
        names += extra_fallbacks
    chain = [model]
    for name in names:
        fallback = fleet.resolve(name)
        if fallback is None or fallback in chain:
            continue
        if client.models and fallback.name not in client.models:
            continue
        chain.append(fallback)
    return tuple(chain)


def _keep_counts(outcome: Outcome) -> int | None:
    """Keep the token counts a node reported only where they are counts (else
    None); the output count."""
    value = outcome.tokens_in
    if type(value) is not int or value < 0:
        outcome.tokens_in = None
    value = outcome.tokens_out
    if type(value) is not int or value < 0:
        outcome.tokens_out = value = None
    return value
