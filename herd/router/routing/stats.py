"""Recent performance per node (and node x model), as exponentially weighted averages.

Fed by the forwarder after each request; read by scoring. Time to first token
and tokens/s are kept per node x model (a node may be fast for one model and
slow for another); the error rate per node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from herd.router.fleetstate import FAILURES, REQUESTS, FleetState

ALPHA = 0.2


def _ewma(old: float | None, new: float, alpha: float = ALPHA) -> float:
    return new if old is None else old + alpha * (new - old)


@dataclass(slots=True)
class _Perf:
    ttft_ms: float | None = None
    tokens_per_s: float | None = None


class Stats:
    """Mutable counters; one instance per router process. `on_failure(node)`
    is told of every node failure (the Prometheus counter). The request and
    failure totals are the fleet's (every worker's, herd.router.fleetstate);
    the averages are this worker's own."""

    def __init__(
        self,
        on_failure: Callable[[str], None] | None = None,
        state: FleetState | None = None,
    ) -> None:
        self._on_failure = on_failure
        self._perf: dict[tuple[str, str], _Perf] = {}
        self._errors: dict[str, float] = {}
        self._state = state if state is not None else FleetState()

    @property
    def requests(self) -> int:
        """Requests served well, by every worker."""
        return self._state.total(REQUESTS)

    @property
    def failures(self) -> int:
        """Node failures seen by every worker."""
        return self._state.total(FAILURES)

    def success(
        self,
        node: str,
        model: str,
        ttft_ms: float | None,
        tokens_out: int | None,
        gen_seconds: float | None,
    ) -> None:
        self._state.bump(REQUESTS)
        key = (node, model)
        perf = self._perf.get(key)
        if perf is None:
            perf = self._perf[key] = _Perf()
        # (_ewma inlined: this runs for every request served.)
        if ttft_ms is not None:
            old = perf.ttft_ms
            perf.ttft_ms = ttft_ms if old is None else old + ALPHA * (ttft_ms - old)
        if tokens_out and gen_seconds and gen_seconds > 0:
            perf.tokens_per_s = _ewma(perf.tokens_per_s, tokens_out / gen_seconds)
        if self._errors:
            rate = self._errors.get(node)
            if rate:
                self._errors[node] = rate * (1 - ALPHA)

    def failure(self, node: str) -> None:
        self._state.bump(FAILURES)
        if self._on_failure is not None:
            self._on_failure(node)
        self._errors[node] = _ewma(self._errors.get(node, 0.0), 1.0)

    def perf(self, node: str, model: str) -> tuple[float | None, float | None]:
        perf = self._perf.get((node, model))
        return (perf.ttft_ms, perf.tokens_per_s) if perf else (None, None)

    def error_rate(self, node: str) -> float:
        return self._errors.get(node, 0.0)
