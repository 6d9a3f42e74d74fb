"""A damaged or wrong-typed current.json swapped in under a real router: it is
refused as a whole, requests keep being served by the good revision (never a
500), and /fleet/status's reload_error names the current problem."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from herd.store import POINTER_NAME, sha256_hex
from tests.router.routerproc import apply, manifest


def _swap(path: Path, data: bytes) -> None:
    """Replace the pointer atomically, as `herd apply` does (new inode)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".test.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _bad_pointers(good: dict) -> list[tuple[str, bytes, str]]:
    """(name, bytes, what reload_error must say): each a different manifest
    whose sha256 is right, with one field of the wrong type or shape."""
    out = []

    def variant(n: int, **override) -> bytes:
        text = good["manifest"] + f"# variant {n}\n"
        raw = {**good, "manifest": text, "sha256": sha256_hex(text.encode())}
        raw["revision"] = good["revision"] + n
        raw.update(override)
        return json.dumps(raw).encode()

    out.append(("manifest-int", variant(1, manifest=12345), "manifest must be"))
    out.append(("manifest-list", variant(2, manifest=["x"]), "manifest must be"))
    out.append(("manifest-null", variant(3, manifest=None), "manifest must be"))
    out.append(("revision-str", variant(4, revision="5"), "revision must be"))
    out.append(("base_dir-int", variant(5, base_dir=7), "base_dir must be"))
    out.append(("sha256-list", variant(6, sha256=[1]), "sha256 must be"))
    out.append(("array", b"[]", "not a JSON object"))
    out.append(("truncated", variant(7)[:40], "unreadable pointer"))
    out.append(("unknown-key", variant(8, extra=True), "unknown key"))
    return out


def _traffic(url: str, stop: threading.Event, statuses: Counter) -> None:
    body = json.dumps({"model": "llama3.2:3b", "prompt": "x", "stream": False})
    for _ in range(20_000):  # bounded; the test stops it long before
        if stop.is_set():
            return
        req = urllib.request.Request(
            url + "/api/generate",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=20) as reply:
                reply.read()
                statuses[reply.status] += 1
        except urllib.error.HTTPError as ex:
            statuses[ex.code] += 1


def test_bad_pointers_are_refused_while_requests_flow(sims, router):
    node = sims("node-a")
    r = router(manifest([node]))
    r.wait_nodes_up(1)
    pointer = r.state_dir / POINTER_NAME
    good_bytes = pointer.read_bytes()
    good = json.loads(good_bytes)
    stop, statuses = threading.Event(), Counter()
    clients = [
        threading.Thread(target=_traffic, args=(r.url, stop, statuses))
        for _ in range(3)
    ]
    for c in clients:
        c.start()
    seen: dict[str, str | None] = {}
    try:
        for name, data, expected in _bad_pointers(good):
            _swap(pointer, data)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                status = r.get("/fleet/status")[1]
                if expected in (status["reload_error"] or ""):
                    break
                time.sleep(0.1)
            seen[name] = status["reload_error"]
            assert expected in (status["reload_error"] or ""), (name, status)
            assert status["revision"] == good["revision"]
        # The good pointer back: the error is over.
        _swap(pointer, good_bytes)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = r.get("/fleet/status")[1]
            if status["reload_error"] is None:
                break
            time.sleep(0.1)
        assert status["reload_error"] is None
        # And a real apply still takes effect.
        text = good["manifest"] + "# next\n"
        assert apply(r.state_dir, text) == good["revision"] + 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = r.get("/fleet/status")[1]
            if status["revision"] == good["revision"] + 1:
                break
            time.sleep(0.1)
        assert status["revision"] == good["revision"] + 1
    finally:
        stop.set()
        for c in clients:
            c.join(30)
    assert sum(statuses.values()) > 0
    assert set(statuses) == {200}, statuses
    assert "Traceback" not in r.log(), seen
