"""The store as a read-only registry, in-process with falcon.testing.

Walks the exact request sequence `ollama pull --insecure` makes (reference §4.3)
against a store filled by a real import of the example bundle.
"""

from __future__ import annotations

import hashlib
import json

import falcon
import falcon.testing
import pytest

from herd.bundle.importer import import_bundle
from herd.router.api import registry
from tests.bundle.bundle_helpers import EXAMPLE, make_bundle, tiny_gguf

OLLAMA_UA = "ollama/0.33.0 (amd64 linux) Go/go1.24.1"


@pytest.fixture
def client(policy, state):
    import_bundle(EXAMPLE, policy, state)
    app = falcon.App()
    registry.add_routes(app, lambda: policy.store)
    return falcon.testing.TestClient(app, headers={"Host": "localhost"})


def manifest_bytes() -> bytes:
    return (EXAMPLE / "manifests/tiny/latest").read_bytes()


def test_pull_sequence_as_ollama_makes_it(client):
    raw = manifest_bytes()
    got = client.simulate_get(
        "/v2/library/tiny/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert got.status_code == 200 and got.content == raw
    assert got.headers["content-type"].startswith(
        "application/vnd.docker.distribution.manifest.v2+json"
    )
    assert (
        got.headers["docker-content-digest"]
        == "sha256:" + hashlib.sha256(raw).hexdigest()
    )
    doc = json.loads(raw)
    for layer in [*doc["layers"], doc["config"]]:
        url = f"/v2/library/tiny/blobs/{layer['digest']}"
        head = client.simulate_head(url, headers={"User-Agent": OLLAMA_UA})
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == layer["size"]
        assert head.content == b""
        resolve = client.simulate_get(url, headers={"User-Agent": OLLAMA_UA})
        assert resolve.status_code == 200
        assert resolve.headers["location"].endswith(url)
        data = b""
        step = 100
        for start in range(0, layer["size"], step):
            end = min(start + step, layer["size"]) - 1
            part = client.simulate_get(
                url,
                headers={"User-Agent": OLLAMA_UA, "Range": f"bytes={start}-{end}"},
            )
            assert part.status_code == 206
            assert (
                part.headers["content-range"] == f"bytes {start}-{end}/{layer['size']}"
            )
            assert len(part.content) == end - start + 1
            data += part.content
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]


def test_plain_get_returns_whole_blob_with_location(client):
    doc = json.loads(manifest_bytes())
    layer = doc["layers"][0]
    got = client.simulate_get(f"/v2/library/tiny/blobs/{layer['digest']}")
    assert got.status_code == 200 and len(got.content) == layer["size"]
    assert "location" in got.headers


def test_names_match_case_insensitively(client):
    got = client.simulate_get("/v2/Library/TINY/manifests/Latest")
    assert got.status_code == 200 and got.content == manifest_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/v2/library/nope/manifests/latest",
        "/v2/library/tiny/manifests/v9",
        "/v2/other/tiny/manifests/latest",
        "/v2/library/tiny/blobs/sha256:" + "0" * 64,
        "/v2/library/tiny/blobs/md5:abc",
    ],
)
def test_unknown_things_are_404_with_registry_errors(client, path):
    got = client.simulate_get(path)
    assert got.status_code == 404
    assert got.json["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "BLOB_UNKNOWN")
    assert client.simulate_head(path).status_code == 404


def test_traversal_attempts_are_404(client):
    for path in (
        "/v2/library/tiny/blobs/..%2F..%2Fetc%2Fpasswd",
        "/v2/library/..%2F..%2F..%2Fetc/manifests/passwd",
        "/v2/library/tiny/manifests/..%2Flatest",
    ):
        assert client.simulate_get(path).status_code == 404, path


def test_blob_of_another_model_is_not_served_under_this_name(
    client, policy, state, tmp_path
):
    other = make_bundle(
        tmp_path / "o", name="o", model="other:1", weights=tiny_gguf(seed=5)
    )
    import_bundle(other, policy, state)
    doc = json.loads(
        (policy.store / "manifests/registry.ollama.ai/library/other/1").read_bytes()
    )
    digest = doc["layers"][0]["digest"]
    assert client.simulate_head(f"/v2/library/other/blobs/{digest}").status_code == 200
    assert client.simulate_head(f"/v2/library/tiny/blobs/{digest}").status_code == 404


def test_bad_ranges(client):
    doc = json.loads(manifest_bytes())
    layer = doc["layers"][0]
    url = f"/v2/library/tiny/blobs/{layer['digest']}"
    past = client.simulate_get(url, headers={"Range": f"bytes={layer['size']}-"})
    assert past.status_code == 416
    tail = client.simulate_get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and len(tail.content) == 10
    open_end = client.simulate_get(url, headers={"Range": "bytes=5-"})
    assert len(open_end.content) == layer["size"] - 5


def test_registry_base(client):
    got = client.simulate_get("/v2/")
    assert got.status_code == 200
    assert got.headers["docker-distribution-api-version"] == "registry/2.0"


def test_pull_over_real_http(policy, state):
    """The same sequence over a real socket on loopback (wsgiref server)."""
    import threading
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):  # noqa: ANN002 - keep test output clean
            pass

    import_bundle(EXAMPLE, policy, state)
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    registry.add_routes(app, policy.store)
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:

        def fetch(path, method="GET", **headers):
            req = urllib.request.Request(
                base + path, method=method, headers={"User-Agent": OLLAMA_UA, **headers}
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()

        status, _, raw = fetch("/v2/library/tiny/manifests/latest")
        assert status == 200 and raw == manifest_bytes()
        layer = json.loads(raw)["layers"][0]
        url = f"/v2/library/tiny/blobs/{layer['digest']}"
        status, headers, body = fetch(url, method="HEAD")
        assert status == 200 and int(headers["Content-Length"]) == layer["size"]
        status, headers, body = fetch(url)
        assert status == 200 and headers["Location"] == base + url and body == b""
        status, headers, body = fetch(url, Range=f"bytes=0-{layer['size'] - 1}")
        assert status == 206
        assert "sha256:" + hashlib.sha256(body).hexdigest() == layer["digest"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
