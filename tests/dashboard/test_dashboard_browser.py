"""The dashboard in real headless Chromium against a running router.

The page loads over the DevTools protocol at 1366x768, the node table and
both charts render from live data, nothing is requested from anywhere but
the router (every request the page made is checked), no script error or
CSP violation is logged, and a screenshot is saved (its path is printed).
"""

from __future__ import annotations

import base64
import time
from urllib.parse import urlsplit

import pytest

from herd.dashboard.page import ASSETS
from tests.dashboard.cdp import BINARY, Chromium
from tests.dashboard.conftest import SENT

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(BINARY is None, reason="Debian package chromium not installed"),
]

STATE = """JSON.stringify({
  nodes: [...document.querySelectorAll('#nodes tbody tr[data-node]')]
    .map(tr => [tr.dataset.node, tr.children[1].textContent]),
  charts: document.querySelectorAll('#chart-rpm canvas, #chart-latency canvas').length,
  total: document.getElementById('traffic-total').textContent,
  groups: document.querySelectorAll('#by-group tbody tr').length,
  health: document.body.dataset.health || '',
  audit: document.querySelectorAll('#audit tbody td.num').length,
  revision: document.getElementById('revision').textContent,
  error: document.getElementById('error').hidden ? '' :
    document.getElementById('error').textContent,
})"""


def rendered(state: dict) -> bool:
    return (
        len(state["nodes"]) == 2
        and state["charts"] >= 2
        and state["total"].startswith(f"{sum(SENT.values())} model requests")
        and state["groups"] >= 2
        and state["health"] == "1"
        and state["audit"] > 0
    )


def test_dashboard_renders_in_chromium_from_the_router_only(fleet, tmp_path, capsys):
    import json

    browser = Chromium.start(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        page = browser.page()
        for domain in ("Network", "Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        page.call(
            "Emulation.setDeviceMetricsOverride",
            width=1366,
            height=768,
            deviceScaleFactor=1,
            mobile=False,
        )
        page.call("Page.navigate", url=fleet.router.url + "/dashboard")
        deadline = time.monotonic() + 25
        state: dict = {}
        while time.monotonic() < deadline:
            state = json.loads(page.evaluate(STATE) or "{}")
            if state and rendered(state):
                break
            time.sleep(0.3)
        assert state and rendered(state), state
        shot = tmp_path / "dashboard-1366x768.png"
        png = page.call("Page.captureScreenshot", format="png")["data"]
        shot.write_bytes(base64.b64decode(png))
        with capsys.disabled():
            print(f"\ndashboard screenshot: {shot}")
        events = list(page.events)
        page.close()
    finally:
        browser.stop()

    assert state["error"] == ""
    assert sorted(state["nodes"]) == [["node-a", "up"], ["node-b", "up"]]
    assert state["revision"] == "revision 1 applied and served"
    assert shot.stat().st_size > 10_000

    origin = urlsplit(fleet.router.url)
    requested = [
        e["params"]["request"]["url"]
        for e in events
        if e["method"] == "Network.requestWillBeSent"
    ]
    foreign = [
        u for u in requested if urlsplit(u)[:2] != (origin.scheme, origin.netloc)
    ]
    assert not foreign, f"the page asked outside the router: {foreign}"
    paths = {urlsplit(u).path for u in requested}
    expected = {"/dashboard", *(f"/dashboard/static/{a}" for a in ASSETS)}
    expected |= {f"/dashboard/api/{n}" for n in ("overview", "traffic", "health")}
    assert expected <= paths, paths
    # No script error and no CSP violation (both are logged by the browser).
    problems = [
        e["params"]
        for e in events
        if e["method"] == "Runtime.exceptionThrown"
        or (
            e["method"] == "Log.entryAdded"
            and e["params"]["entry"]["level"] == "error"
            and "favicon" not in e["params"]["entry"].get("url", "")
        )
    ]
    assert not problems, problems
