"""GET /dashboard/api/health: the health engine's findings (operator groups only).

The findings name nodes, models and paths, so, like /fleet/nodes, only a
client group with `operator: true` may read them. It answers like the rest of
/dashboard/api (herd.dashboard.api): the dashboard's headers, no caching, and
an answered poll is counted in /metrics but not traced.
"""

from __future__ import annotations

from typing import Any

from herd.dashboard.api import admit, send_json
from herd.health import checks
from herd.health.gather import Monitor

PATH = "/dashboard/api/health"


class Health:
    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    def on_get(self, req: Any, resp: Any) -> None:
        admit(req, resp, PATH)
        served = req.context.served
        body = checks.run(self.monitor.snapshot(served))
        body["revision"] = served.revision
        body["checked_at"] = self.monitor.rt.clock()
        send_json(req, resp, body, self.monitor.rt)

    on_head = on_get
