"""The router's /v2 registry under Ollama's exact pull sequence, over real HTTP
(gunicorn + gevent): a 300 MB blob fetched in 8 parallel Range GETs, reassembled
and sha256-checked, plus the odd ranges, on the real server."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import psutil
import pytest
import yaml

from herd.bundle.importer import import_bundle
from herd.bundle.policy import Policy
from herd.store import Store
from tests.bundle.bundle_helpers import ALLOWED, big_gguf, make_bundle
from tests.router.routerproc import manifest, start_router

OLLAMA_UA = "ollama/0.33.0 (amd64 linux) Go/go1.24.1"
ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
SIZE = 300_000_000


class _Node:
    name, url = "n1", "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regpull")
    state_dir = tmp / "state"
    weights = big_gguf(tmp / "w.gguf", SIZE)
    bundle = make_bundle(tmp / "b", name="huge", model="huge:1", weights=weights)
    weights.unlink()
    store = Store(state_dir)
    try:
        import_bundle(bundle, Policy(ALLOWED, True, state_dir / "store"), store)
    finally:
        store.close()
    doc = yaml.safe_load(manifest([_Node()]))
    doc["models"] = [{"name": "huge:1", "place": {"nodes": ["n1"]}, "bundle": "huge"}]
    router = start_router(state_dir, yaml.safe_dump(doc), tmp / "router.log")
    yield router, state_dir / "store"
    router.stop()


def request(base: str, method: str, path: str, **headers: str):
    parts = urlsplit(base if path.startswith("/") else path)
    conn = http.client.HTTPConnection(parts.netloc, timeout=60)
    target = path if path.startswith("/") else parts.path
    conn.request(method, target, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_ollama_pull_sequence_with_parallel_ranges(served, tmp_path):
    router, store = served
    resp, raw = request(
        router.url,
        "GET",
        "/v2/library/huge/manifests/1",
        Accept=ACCEPT,
        **{"User-Agent": OLLAMA_UA},
    )
    assert resp.status == 200
    assert raw == (store / "manifests/registry.ollama.ai/library/huge/1").read_bytes()
    layer = max(json.loads(raw)["layers"], key=lambda x: x["size"])
    total = layer["size"]
    assert total > SIZE - 1000
    url = f"/v2/library/huge/blobs/{layer['digest']}"

    head, body = request(router.url, "HEAD", url, **{"User-Agent": OLLAMA_UA})
    assert head.status == 200 and body == b""
    assert int(head.getheader("Content-Length")) == total

    resolve, body = request(router.url, "GET", url, **{"User-Agent": OLLAMA_UA})
    assert resolve.status == 200 and body == b""
    location = resolve.getheader("Location")
    assert location and urlsplit(location).path == url
    data_url = router.url + urlsplit(location).path

    part = -(-total // 8)
    ranges = [(s, min(s + part, total) - 1) for s in range(0, total, part)]
    assert len(ranges) == 8
    out = tmp_path / "blob"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)

    def fetch(r: tuple[int, int]) -> int:
        first, last = r
        parts = urlsplit(data_url)
        conn = http.client.HTTPConnection(parts.netloc, timeout=120)
        conn.request(
            "GET",
            parts.path,
            headers={
                "Range": f"bytes={first}-{last}",
                "User-Agent": "Go-http-client/1.1",
            },
        )
        resp = conn.getresponse()
        assert resp.status == 206
        assert resp.getheader("Content-Range") == f"bytes {first}-{last}/{total}"
        offset = first
        while chunk := resp.read(1 << 20):
            os.pwrite(fd, chunk, offset)
            offset += len(chunk)
        conn.close()
        return offset - first

    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(fetch, ranges))
    finally:
        os.close(fd)
    assert got == [last - first + 1 for first, last in ranges]
    h = hashlib.sha256()
    with open(out, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    assert "sha256:" + h.hexdigest() == layer["digest"]


def test_odd_ranges_over_real_http(served):
    router, store = served
    raw = (store / "manifests/registry.ollama.ai/library/huge/1").read_bytes()
    layer = max(json.loads(raw)["layers"], key=lambda x: x["size"])
    total = layer["size"]
    url = f"/v2/library/huge/blobs/{layer['digest']}"
    blob = store / "blobs" / layer["digest"].replace(":", "-")
    with open(blob, "rb") as fh:
        head = fh.read(100)
        fh.seek(total - 100)
        tail = fh.read()
    resp, body = request(router.url, "GET", url, Range=f"bytes={total - 1}-{total - 1}")
    assert resp.status == 206 and body == tail[-1:]
    resp, body = request(router.url, "GET", url, Range="bytes=-100")
    assert resp.status == 206 and body == tail
    assert resp.getheader("Content-Range") == f"bytes {total - 100}-{total - 1}/{total}"
    resp, body = request(router.url, "GET", url, Range="bytes=0-99")
    assert resp.status == 206 and body == head
    resp, body = request(router.url, "GET", url, Range=f"bytes={total}-")
    assert resp.status == 416 and body == b""
    assert resp.getheader("Content-Range") == f"bytes */{total}"
    resp, body = request(router.url, "GET", "/v2/library/huge/blobs/sha256:" + "0" * 64)
    assert resp.status == 404
    resp, _ = request(router.url, "GET", "/v2/library/huge/manifests/2", Accept=ACCEPT)
    assert resp.status == 404


def test_big_bodies_are_sent_by_the_idle_blob_sender(served):
    """Past the first 1 MiB, a blob body is sent by the worker's blob sender
    process at the lowest CPU priority, not by the worker's event loop; a body
    up to 1 MiB by the worker itself (sendfile). Both exact."""
    router, store = served
    raw = (store / "manifests/registry.ollama.ai/library/huge/1").read_bytes()
    layer = max(json.loads(raw)["layers"], key=lambda x: x["size"])
    url = f"/v2/library/huge/blobs/{layer['digest']}"
    blob = store / "blobs" / layer["digest"].replace(":", "-")
    with open(blob, "rb") as fh:
        fh.seek(1000)
        want = fh.read(8 << 20)
    for length in (300 << 10, 8 << 20):  # the worker / the sender
        resp, body = request(
            router.url, "GET", url, Range=f"bytes=1000-{1000 + length - 1}"
        )
        assert resp.status == 206 and body == want[:length]
    procs = psutil.Process(router.proc.pid).children(recursive=True)
    senders = [p for p in procs if "herd.router.http.blobsender" in p.cmdline()]
    assert len(senders) == 1
    sender = senders[0]
    assert "blobsender" not in " ".join(sender.parent().cmdline())  # the worker's
    assert sender.nice() == 19
    assert os.sched_getscheduler(sender.pid) == os.SCHED_IDLE
    assert sender.cpu_times().system + sender.cpu_times().user > 0
