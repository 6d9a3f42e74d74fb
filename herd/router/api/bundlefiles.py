"""`GET /v2/_herd/bundles/{name}/{path}`: one file of an imported bundle, for a peer.

The other router of a keepalived pair rebuilds a bundle's tree from these
(`herd bundle import --from-peer`): the signed `bundle.yaml`, its signature,
the scan report, the model manifests and the blobs (a split blob's parts as
byte ranges of the stored blob), each under its path in the bundle. The gate
admits only the registry's callers (nodes and the peer routers); the receiver
verifies everything as a USB import does, so this serves bytes, not trust.
`_herd` can never be an Ollama namespace here (the registry's name parts
start with a letter, digit or underscore, and no model is stored under it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon

from herd.bundle import kept
from herd.errors import BundleError
from herd.router.api.registry import _body, _error

ROUTE = "/v2/_herd/bundles/{name}/{path:path}"


class BundleFiles:
    """Serves the files a kept bundle index lists (see herd.bundle.kept)."""

    def __init__(self, store_root: Callable[[], Path]):
        self.store_root = store_root

    def on_get(self, req: Any, resp: Any, name: str, path: str) -> None:
        try:
            found = kept.locate(self.store_root(), name, path)
        except BundleError:
            found = None
        if found is None:
            _error(
                resp,
                falcon.HTTP_404,
                "BLOB_UNKNOWN",
                f"bundle {name}: no file {path} here (imported before herd kept "
                "bundle indexes? import it again from the stick)",
            )
            return
        resp.content_type = "application/octet-stream"
        _body(req, resp, found.path, found.offset, found.length)
