"""GET /dashboard/api/health: the health engine's findings (operator groups only).

The findings name nodes, models and paths, so, like /fleet/nodes, only a
client group with `operator: true` may read them.
"""

from __future__ import annotations

from typing import Any

import falcon

from herd.health import checks
from herd.health.gather import Monitor
from herd.router.policy import require_operator
from herd.router.routing.forward import dumps

PATH = "/dashboard/api/health"


class Health:
    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    def on_get(self, req: Any, resp: Any) -> None:
        require_operator(req.context.client, PATH)
        served = req.context.served
        body = checks.run(self.monitor.snapshot(served))
        body["revision"] = served.revision
        body["checked_at"] = self.monitor.rt.clock()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(body)
