"""Operations endpoints: /healthz (alive), /readyz (some node up), /metrics.

/metrics is Prometheus text exposition (the series are described in
herd.router.observe.metrics); it names nodes, so only operator client groups may read
it. /healthz and /readyz answer anyone (load balancers, systemd) and so say
nothing about which nodes there are.
"""

from __future__ import annotations

from typing import Any

import falcon

from herd.router.observe.metrics import CONTENT_TYPE
from herd.router.policy import require_operator
from herd.router.routing.forward import dumps
from herd.router.runtime import Runtime


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
        served = req.context.served
        up = sum(1 for n in served.fleet.nodes if self.rt.poller.get(n).up)
        resp.content_type = falcon.MEDIA_JSON
        resp.status = falcon.HTTP_200 if up else falcon.HTTP_503
        # revision and reload_refused: what `systemctl reload` waits for (the
        # reason is in /fleet/status, for client groups only).
        resp.data = dumps(
            {
                "ready": bool(up),
                "nodes_up": up,
                "revision": served.revision,
                "reload_refused": bool(getattr(self.rt.source, "last_error", None)),
            }
        )

    on_head = on_get


class Metrics:
    """Prometheus text exposition of every worker's counts (see observe/metrics.py)."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        require_operator(req.context.client, "/metrics")
        resp.content_type = CONTENT_TYPE
        resp.data = self.rt.metrics_text(req.context.served.fleet)

    on_head = on_get
