"""Operations endpoints: /healthz (alive), /readyz (some node up), /metrics.

/metrics is Prometheus text exposition, built from the counters the router
keeps anyway (no per-request cost beyond them); it names nodes, so only
operator client groups may read it. /healthz and /readyz answer anyone (load
balancers, systemd) and so say nothing about which nodes there are.
"""

from __future__ import annotations

from typing import Any

import falcon

from herd.router.forward import dumps
from herd.router.policy import require_operator
from herd.router.runtime import Runtime

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Healthz:
    def on_get(self, req: Any, resp: Any) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = b'{"status":"ok"}'

    on_head = on_get


class Readyz:
    """Ready when at least one node of the served manifest is up."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        fleet = req.context.served.fleet
        up = sum(1 for n in fleet.nodes if self.rt.poller.get(n).up)
        resp.content_type = falcon.MEDIA_JSON
        resp.status = falcon.HTTP_200 if up else falcon.HTTP_503
        resp.data = dumps({"ready": bool(up), "nodes_up": up})

    on_head = on_get


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        require_operator(req.context.client, "/metrics")
        rt = self.rt
        fleet = req.context.served.fleet
        lines = [
            "# TYPE herd_requests_total counter",
            f"herd_requests_total {rt.stats.requests}",
            "# TYPE herd_upstream_failures_total counter",
            f"herd_upstream_failures_total {rt.stats.failures}",
            "# TYPE herd_traces_written_total counter",
            f"herd_traces_written_total {rt.traces.written}",
            "# TYPE herd_traces_dropped_total counter",
            f"herd_traces_dropped_total {rt.traces.dropped}",
            "# TYPE herd_refusals_unrecorded_total counter",
            f"herd_refusals_unrecorded_total {rt.refusals.unrecorded}",
            "# TYPE herd_traces_pending gauge",
            f"herd_traces_pending {rt.traces.pending}",
            "# TYPE herd_traces_write_failures_total counter",
            f"herd_traces_write_failures_total {rt.traces.write_failures}",
            "# TYPE herd_node_up gauge",
            "# TYPE herd_node_in_flight gauge",
            "# TYPE herd_node_waiting gauge",
        ]
        for node in fleet.nodes:
            name = _label(node.name)
            up = 1 if rt.poller.get(node).up else 0
            lines.append(f'herd_node_up{{node="{name}"}} {up}')
            lines.append(
                f'herd_node_in_flight{{node="{name}"}} {rt.queues.in_flight(node.name)}'
            )
            lines.append(
                f'herd_node_waiting{{node="{name}"}} {rt.queues.waiting(node.name)}'
            )
        resp.content_type = PROMETHEUS
        resp.data = ("\n".join(lines) + "\n").encode()
