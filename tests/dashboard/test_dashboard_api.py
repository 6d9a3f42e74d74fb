"""/dashboard and /dashboard/api/* through a real router (gunicorn + gevent)
over `herd sim` nodes: operator groups only, the page's files with their
content types and CSP, and JSON whose aggregates match the traffic sent."""

from __future__ import annotations

import math
import sqlite3
import time
from collections import Counter
from typing import Any

import pytest

from herd.dashboard.page import ASSETS
from tests.dashboard.conftest import SENT, close

pytestmark = pytest.mark.e2e

API = ["overview", "traffic", "audit", "health"]
PAGES = ["/dashboard", *(f"/dashboard/static/{a}" for a in ASSETS)]


def get(fleet, path: str, group: str = "ops", **headers: str):
    with fleet.client(group) as client:
        return client.get(path, headers=headers)


def wait_json(fleet, path: str, predicate, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        reply = get(fleet, path)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        if predicate(body):
            return body
        time.sleep(0.5)
    raise AssertionError(f"never saw {what}: {body}")


@pytest.mark.parametrize("path", PAGES + [f"/dashboard/api/{n}" for n in API])
def test_non_operators_are_refused(fleet, path):
    reply = get(fleet, path, group="apps")
    assert reply.status_code == 403
    assert "operator" in reply.json()["error"]
    assert "node-a" not in reply.text
    # A refusal carries the dashboard's headers too.
    assert "default-src 'self'" in reply.headers["content-security-policy"]
    assert reply.headers["cache-control"] == "no-store"


def dashboard_rows(fleet, where: str, *args: Any) -> int:
    path = fleet.router.state_dir / "traces.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        (found,) = conn.execute(
            "SELECT count(*) FROM traces"
            f" WHERE route LIKE '/dashboard/api/%' AND {where}",
            args,
        ).fetchone()
    finally:
        conn.close()
    return found


def test_json_is_never_cached_and_polls_are_counted_not_traced(fleet):
    """Every /dashboard/api answer has the CSP and no-store; an operator's poll
    is in /metrics but neither a trace row nor an access log line."""
    for name in API:
        for _ in range(2):
            reply = get(fleet, f"/dashboard/api/{name}")
            assert reply.status_code == 200, (name, reply.text)
            assert "default-src 'self'" in reply.headers["content-security-policy"]
            assert reply.headers["cache-control"] == "no-store", name
    # The one worker writes traces in order, about a second late: once this
    # tagged refusal's row is there, every poll before it would be too.
    marker = get(fleet, "/dashboard/api/health", "apps", **{"X-Herd-Tag": "probe:po"})
    assert marker.status_code == 403
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if dashboard_rows(fleet, "tags = ?", "probe:po"):
            break
        time.sleep(0.2)
    assert dashboard_rows(fleet, "tags = ?", "probe:po") == 1
    assert dashboard_rows(fleet, "status = 200") == 0
    metrics = get(fleet, "/metrics").text
    for name in API:
        series = [
            line
            for line in metrics.splitlines()
            if line.startswith("herd_requests_total{")
            and f'route="/dashboard/api/{name}"' in line
            and 'status="200"' in line
        ]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in series) >= 2, name


def test_page_and_assets_are_served_with_csp(fleet):
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
    for path in PAGES:
        reply = get(fleet, path)
        assert reply.status_code == 200, path
        suffix = "." + path.rsplit(".", 1)[-1] if "." in path else ".html"
        assert reply.headers["content-type"].startswith(types[suffix]), path
        assert "default-src 'self'" in reply.headers["content-security-policy"]
        assert reply.headers["x-content-type-options"] == "nosniff"
        # Revalidated, and cheap to revalidate.
        again = get(fleet, path, **{"If-None-Match": reply.headers["etag"]})
        assert again.status_code == 304 and not again.content
    page = get(fleet, "/dashboard").text
    # Nothing from elsewhere, and no inline script for the CSP to block.
    assert "http://" not in page and "https://" not in page and "//" not in page
    assert "<script>" not in page and "onclick" not in page
    assert get(fleet, "/dashboard/static/vendor/refresh.sh").status_code == 404
    assert get(fleet, "/dashboard/static/..%2Fapi.py").status_code == 404


def test_overview_nodes_revision_and_drift(fleet):
    body = wait_json(
        fleet,
        "/dashboard/api/overview",
        lambda b: all(n["models_loaded"] is not None for n in b["nodes"]),
        "the nodes",
    )
    assert body["fleet"] == "test-fleet"
    nodes = {n["name"]: n for n in body["nodes"]}
    assert set(nodes) == {"node-a", "node-b"}
    for node in nodes.values():
        assert node["state"] == "up" and node["found"] == "static"
        assert node["max_concurrency"] == 8
        assert isinstance(node["in_flight"], int) and isinstance(node["waiting"], int)
    rev = body["revision"]
    assert rev["served"] == rev["applied"] == 1 and rev["serves_applied"] is True
    assert rev["reload_error"] is None
    # Every sim holds every declared model: herd plan would do nothing.
    drift = body["drift"]
    assert drift["in_sync"] is True and drift["changes"] == 0
    assert {n["node"] for n in drift["nodes"]} == {"node-a", "node-b"}
    assert {m["name"] for m in body["models"]} >= {"llama3.2:3b", "qwen3:0.6b"}


def test_traffic_matches_what_was_sent(fleet):
    total = sum(SENT.values())
    body = wait_json(
        fleet,
        "/dashboard/api/traffic",
        lambda b: b["available"] and b["windows"]["hour"]["total"]["count"] >= total,
        f"{total} model requests",
    )
    for name in ("hour", "day"):
        window = body["windows"][name]
        assert window["sampled_every"] == 1
        assert window["total"]["count"] == total
        assert window["total"]["errors"] == 1
        assert sum(window["series"]["requests"]) == total
        assert len(window["series"]["t"]) == len(window["series"]["rpm"])
        groups = Counter()
        tags = Counter()
        for (group, tag, _model, _status), count in SENT.items():
            groups[group] += count
            tags[tag or "(untagged)"] += count
        assert {g["key"]: g["count"] for g in window["by_group"]} == groups
        assert {t["key"]: t["count"] for t in window["by_tag"]} == tags
        models = {m["key"]: m["count"] for m in window["by_model"]}
        assert models == {"llama3.2:3b": 7, "qwen3:0.6b": 2, "no-such-model": 1}
        ok = [g for g in window["by_group"] if g["key"] == "ops"][0]
        assert ok["ttft_p95_ms"] is not None and ok["duration_p95_ms"] > 0


def test_percentiles_match_the_stored_traces(fleet):
    """p50/p95 per group are the nearest-rank percentiles of the rows in
    traces.db, computed here independently, within the rollup's histogram
    error."""
    path = fleet.router.state_dir / "traces.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT client, ttft_ms, duration_ms FROM traces"
            " WHERE requested_model IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    window = get(fleet, "/dashboard/api/traffic").json()["windows"]["hour"]
    for group in window["by_group"]:
        for column, name in ((1, "ttft"), (2, "duration")):
            values = sorted(
                r[column]
                for r in rows
                if r[0] == group["key"] and r[column] is not None
            )
            for p in (50, 95):
                rank = max(1, math.ceil(p / 100 * len(values)))
                expected = round(values[rank - 1], 3) if values else None
                got = group[f"{name}_p{p}_ms"]
                assert close(got, expected), (group, name, p)


def test_audit_lists_the_apply_with_an_intact_chain(fleet):
    body = get(fleet, "/dashboard/api/audit").json()
    assert body["available"] is True
    assert body["events"], body
    newest = body["events"][0]
    assert set(newest) >= {"id", "time", "user", "action", "revision", "detail"}
    assert any(e["revision"] == 1 for e in body["events"])
    assert body["chain"]["intact"] is True
    assert body["chain"]["rows"] >= len(body["events"])


def test_health_answers_operators(fleet):
    body = get(fleet, "/dashboard/api/health").json()
    assert body["status"] in {"ok", "info", "unknown", "warning", "critical"}
    assert {"findings", "passed", "counts"} <= set(body)
