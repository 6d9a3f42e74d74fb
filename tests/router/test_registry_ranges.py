"""Range handling of the /v2 blob route: exact slices or a clear refusal.

Ollama copies exactly the bytes it asked for into the part's offset without
looking at the status, so a range must be honoured to the byte (206) or
refused (416); a malformed or multi-range header is ignored (200, the whole
blob), as HTTP says."""

from __future__ import annotations

import hashlib
import json

import falcon
import falcon.testing
import pytest

from herd.bundle.importer import import_bundle
from herd.bundle.policy import Policy
from herd.router.api import registry
from herd.store import Store
from tests.bundle.bundle_helpers import ALLOWED, EXAMPLE


@pytest.mark.parametrize(
    ("header", "want"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=99-99", (99, 99)),  # the last byte
        ("bytes=99-", (99, 99)),
        ("bytes=90-500", (90, 99)),  # clipped at the end
        ("bytes=-10", (90, 99)),  # suffix
        ("bytes=-1000", (0, 99)),
        ("bytes= 3 - 7", (3, 7)),
        ("Bytes=3-7", (3, 7)),
        ("items=0-1", None),
        ("bytes=0-1,5-6", None),
        ("bytes=7-3", None),
        ("bytes=abc", None),
        ("bytes=-", None),
        ("bytes", None),
    ],
)
def test_byte_range(header, want):
    assert registry.byte_range(header, 100) == want


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable(header):
    with pytest.raises(registry.Unsatisfiable):
        registry.byte_range(header, 100)


def test_empty_blob_has_no_satisfiable_range():
    with pytest.raises(registry.Unsatisfiable):
        registry.byte_range("bytes=-5", 0)


@pytest.fixture
def served(tmp_path):
    policy = Policy(trusted_signers=ALLOWED, require_scan=True, store=tmp_path / "s")
    state = Store(tmp_path / "state")
    import_bundle(EXAMPLE, policy, state)
    state.close()
    app = falcon.App()
    registry.add_routes(app, policy.store)
    raw = (
        policy.store / "manifests/registry.ollama.ai/library/tiny/latest"
    ).read_bytes()
    layer = json.loads(raw)["layers"][0]
    blob = (policy.store / "blobs" / layer["digest"].replace(":", "-")).read_bytes()
    url = f"/v2/library/tiny/blobs/{layer['digest']}"
    return falcon.testing.TestClient(app, headers={"Host": "localhost"}), url, blob


def test_416_names_the_size_and_has_no_body(served):
    client, url, blob = served
    got = client.simulate_get(url, headers={"Range": f"bytes={len(blob)}-"})
    assert got.status_code == 416
    assert got.headers["content-range"] == f"bytes */{len(blob)}"
    assert got.content == b""


def test_every_slice_is_exact(served):
    client, url, blob = served
    size = len(blob)
    for header, first, last in [
        ("bytes=0-0", 0, 0),
        (f"bytes={size - 1}-{size - 1}", size - 1, size - 1),
        (f"bytes={size - 1}-", size - 1, size - 1),
        ("bytes=-7", size - 7, size - 1),
        (f"bytes=5-{size + 50}", 5, size - 1),
    ]:
        got = client.simulate_get(url, headers={"Range": header})
        assert got.status_code == 206, header
        assert got.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert int(got.headers["content-length"]) == last - first + 1
        assert got.content == blob[first : last + 1], header


def test_ignored_range_sends_the_whole_blob(served):
    client, url, blob = served
    got = client.simulate_get(url, headers={"Range": "bytes=0-1,4-5"})
    assert got.status_code == 200
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(blob).digest()


def test_chunks_are_bounded(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * (registry.CHUNK // 64))
    pieces = list(registry._chunks(path, 3, registry.CHUNK * 3 + 5))
    assert max(map(len, pieces)) <= registry.CHUNK
    assert b"".join(pieces) == path.read_bytes()[3 : 3 + registry.CHUNK * 3 + 5]
