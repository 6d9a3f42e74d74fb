"""The /metrics exposition's parts beyond prometheus_client's own collectors:
herd_requests_total read from the fleet state, the node gauges of the
answering worker, and the filter that drops gone nodes' gauges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from herd.router.fleetstate import FleetState

#: Labels of herd_requests_total, and the separator of their values in the
#: fleet state's series names (herd.router.observe.metrics counts them).
REQUEST_LABELS = ("route", "model", "node", "group", "status")
SEP = "\x1f"
#: Families whose samples carry a `node` label and are filtered to the
#: nodes of the served manifest at scrape time.
NODE_GAUGES = ("herd_node_in_flight", "herd_node_waiting")


def requests_family(state: FleetState) -> Metric:
    """herd_requests_total: every worker's counts, those of gone workers
    included (the fleet state keeps them), so totals never go backwards."""
    family = CounterMetricFamily(
        "herd_requests",
        "Requests answered, by route, model, node, client group and HTTP "
        "status (refusals included).",
        labels=REQUEST_LABELS,
    )
    for labels, total in state.series_totals():
        values = labels.split(SEP)
        if len(values) == len(REQUEST_LABELS) and total:
            family.add_metric(values, total)
    return family


class Filtered:
    """A collector passing through another's families, minus node gauges of
    nodes no longer in the manifest (a worker's file keeps them otherwise)."""

    def __init__(self, inner: Any, nodes: Callable[[], frozenset[str]]):
        self.inner = inner
        self.nodes = nodes

    def collect(self) -> Iterator[Metric]:
        nodes = self.nodes()
        for family in self.inner.collect():
            if family.name in NODE_GAUGES:
                family.samples = [
                    s for s in family.samples if s.labels["node"] in nodes
                ]
            yield family


class Live:
    def __init__(self, live: Callable[[], Iterable[Metric]]):
        self.live = live

    def collect(self) -> Iterator[Metric]:
        yield from self.live()


def node_families(
    nodes: Iterable[tuple[str, bool, int, int, int]],
) -> list[Metric]:
    """herd_node_up, herd_node_slots, herd_node_in_flight and
    herd_node_waiting from (name, up, max_concurrency, in_flight, waiting),
    read from the fleet state every worker shares at scrape time."""
    up = GaugeMetricFamily(
        "herd_node_up",
        "1 when the node answers its health checks, else 0.",
        labels=("node",),
    )
    in_flight = GaugeMetricFamily(
        "herd_node_in_flight",
        "Requests being served by a node (all workers).",
        labels=("node",),
    )
    waiting = GaugeMetricFamily(
        "herd_node_waiting",
        "Requests queued for a node's free slot (all workers).",
        labels=("node",),
    )
    slots = GaugeMetricFamily(
        "herd_node_slots",
        "Requests a node serves at once (max_concurrency in the manifest).",
        labels=("node",),
    )
    for name, is_up, max_concurrency, busy, queued in nodes:
        up.add_metric((name,), 1 if is_up else 0)
        slots.add_metric((name,), max_concurrency)
        in_flight.add_metric((name,), busy)
        waiting.add_metric((name,), queued)
    return [up, slots, in_flight, waiting]
