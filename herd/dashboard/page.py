"""GET /dashboard and /dashboard/static/...: the page and its files, from the package.

Only the files listed in `ASSETS` are served (no path from the URL ever
reaches the file system), with their content type, an ETag, and the
dashboard's Content-Security-Policy (`default-src 'self'`): the page loads
its script, styles and the vendored chart library (static/vendor/) from the
router and nothing else, and runs no inline script.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon

from herd.dashboard.api import SECURITY_HEADERS, admit

STATIC = Path(__file__).resolve().parent / "static"
PAGE = "/dashboard"
ASSET_PREFIX = "/dashboard/static"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
#: URL path under ASSET_PREFIX -> file under STATIC.
ASSETS = (
    "dashboard.js",
    "dashboard.css",
    "vendor/uPlot.iife.min.js",
    "vendor/uPlot.min.css",
)


@dataclass(frozen=True)
class Asset:
    data: bytes
    content_type: str
    etag: str


def load(relative: str) -> Asset:
    data = (STATIC / relative).read_bytes()
    return Asset(
        data, _TYPES[Path(relative).suffix], hashlib.sha256(data).hexdigest()[:32]
    )


def send(req: Any, resp: Any, asset: Asset) -> None:
    resp.set_headers(SECURITY_HEADERS)
    # The page and its files hold no data (the JSON is no-store), so they may be
    # cached, but are revalidated on every load (cheap with the ETag): an upgrade
    # shows at once.
    resp.set_header("Cache-Control", "no-cache")
    resp.etag = asset.etag
    if req.if_none_match and any(tag in (asset.etag, "*") for tag in req.if_none_match):
        resp.status = falcon.HTTP_304
        return
    resp.content_type = asset.content_type
    resp.data = asset.data


class Page:
    """GET /dashboard: index.html."""

    def __init__(self) -> None:
        self.asset = load("index.html")

    def on_get(self, req: Any, resp: Any) -> None:
        admit(req, resp, PAGE)
        send(req, resp, self.asset)

    on_head = on_get


class Static:
    """GET /dashboard/static/{name} and /dashboard/static/vendor/{name}."""

    def __init__(self) -> None:
        self.assets = {name: load(name) for name in ASSETS}

    def on_get(self, req: Any, resp: Any, name: str, folder: str = "") -> None:
        admit(req, resp, PAGE)
        asset = self.assets.get(f"{folder}/{name}" if folder else name)
        if asset is None:
            raise falcon.HTTPNotFound(
                description=f"no dashboard file {req.path} (the page needs only "
                "those it names)"
            )
        send(req, resp, asset)

    def on_get_vendor(self, req: Any, resp: Any, name: str) -> None:
        self.on_get(req, resp, name, "vendor")

    on_head = on_get
    on_head_vendor = on_get_vendor


def add_routes(app: Any, dashboard: Any) -> None:
    """Mount the page, its files and the JSON API (herd.dashboard.api) on `app`."""
    from herd.dashboard import api

    app.add_route(PAGE, Page())
    static = Static()
    app.add_route(f"{ASSET_PREFIX}/{{name}}", static)
    app.add_route(f"{ASSET_PREFIX}/vendor/{{name}}", static, suffix="vendor")
    app.add_route(f"{api.PREFIX}/overview", api.Overview(dashboard))
    app.add_route(f"{api.PREFIX}/traffic", api.Traffic(dashboard))
    app.add_route(f"{api.PREFIX}/audit", api.Audit(dashboard))
