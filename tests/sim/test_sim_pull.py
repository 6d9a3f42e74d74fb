"""`herd sim` model management over real HTTP: /api/pull against herd's registry,
/api/copy, DELETE /api/delete, and /api/tags and /api/ps from the store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import ollama
import pytest

from herd.bundle.importer import import_bundle
from herd.bundle.policy import Policy
from herd.store import Store
from tests.bundle.bundle_helpers import ALLOWED, EXAMPLE, make_bundle, tiny_gguf
from tests.router.routerproc import free_port, start_sim
from tests.sim.registry_server import serve_registry


@pytest.fixture
def bundle_store(tmp_path: Path) -> Path:
    """A bundle store holding the example bundle (`tiny:latest`) and `big:1`, a
    model with a 3 MB layer (several Range parts at the sim's 0.5 MB parts)."""
    policy = Policy(trusted_signers=ALLOWED, require_scan=True, store=tmp_path / "bs")
    state = Store(tmp_path / "state")
    try:
        import_bundle(EXAMPLE, policy, state)
        big = make_bundle(
            tmp_path / "big",
            name="big",
            model="big:1",
            weights=tiny_gguf(width=3 << 18),
        )
        import_bundle(big, policy, state)
    finally:
        state.close()
    return policy.store


@pytest.fixture
def sim(tmp_path: Path):
    node = start_sim(
        "n1", models="", extra=("--store", str(tmp_path / "node"), "--part-mb", "0.5")
    )
    yield node
    node.kill()


def pull(sim, name: str, **extra) -> list[dict]:
    reply = httpx.post(
        sim.url + "/api/pull",
        json={"model": name, "insecure": True, **extra},
        timeout=60,
    )
    assert reply.status_code == 200
    lines = reply.text.split("\n")
    assert lines[-1] == "" and all(lines[:-1]), "one object per line, no blanks"
    return [json.loads(line) for line in lines[:-1]]


def tags(sim) -> dict[str, dict]:
    models = httpx.get(sim.url + "/api/tags", timeout=5).json()["models"]
    return {m["name"]: m for m in models}


def test_pull_copy_delete_round_trip(sim, bundle_store, tmp_path):
    with serve_registry(bundle_store) as registry:
        long = f"{registry}/library/big:1"
        events = pull(sim, long)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    pulling = [e for e in events if e["status"].startswith("pulling ")][1:]
    assert pulling and all(e["completed"] <= e["total"] for e in pulling)
    raw = (bundle_store / "manifests/registry.ollama.ai/library/big/1").read_bytes()
    listed = tags(sim)
    assert list(listed) == [long]
    assert listed[long]["digest"] == hashlib.sha256(raw).hexdigest()
    doc = json.loads(raw)
    assert listed[long]["size"] == sum(
        x["size"] for x in [*doc["layers"], doc["config"]]
    )
    blobs = tmp_path / "node" / "blobs"
    for layer in doc["layers"]:
        data = (blobs / layer["digest"].replace(":", "-")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]

    client = ollama.Client(host=sim.url)
    client.copy(long, "big:1")
    assert set(tags(sim)) == {long, "big:1"}
    client.delete(long)
    assert list(tags(sim)) == ["big:1"]
    assert len(list(blobs.iterdir())) == len(doc["layers"]) + 1, "blobs stay"
    reply = client.chat(model="big:1", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content
    assert [m.model for m in client.ps().models] == ["big:1"]
    client.delete("big:1")
    assert tags(sim) == {} and list(blobs.iterdir()) == []
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("big:1")
    assert err.value.status_code == 404


def test_second_pull_reuses_blobs(sim, bundle_store):
    with serve_registry(bundle_store) as registry:
        pull(sim, f"{registry}/library/tiny")
        again = pull(sim, f"{registry}/library/tiny:latest")
    blobs = [e for e in again if e["status"].startswith("pulling ") and "digest" in e]
    assert blobs and all(e["completed"] == e["total"] for e in blobs)


def test_registry_unreachable(sim):
    events = pull(sim, f"127.0.0.1:{free_port()}/library/tiny:latest")
    assert "connection refused" in events[-1]["error"]
    assert tags(sim) == {}


def test_unknown_model_is_ollamas_404_message(sim, bundle_store):
    with serve_registry(bundle_store) as registry:
        events = pull(sim, f"{registry}/library/nope:1")
    assert events[-1] == {"error": "pull model manifest: file does not exist"}


def test_without_insecure_it_wants_https(sim, bundle_store):
    with serve_registry(bundle_store) as registry:
        events = pull(sim, f"{registry}/library/tiny", insecure=False)
    assert "HTTPS" in events[-1]["error"]


def test_corrupt_blob_is_a_digest_mismatch_and_is_deleted(sim, bundle_store, tmp_path):
    doc = json.loads(
        (bundle_store / "manifests/registry.ollama.ai/library/big/1").read_bytes()
    )
    blob = bundle_store / "blobs" / doc["layers"][0]["digest"].replace(":", "-")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with serve_registry(bundle_store) as registry:
        events = pull(sim, f"{registry}/library/big:1")
    assert events[-1]["error"].startswith("digest mismatch, file must be downloaded")
    assert tags(sim) == {}
    assert not (tmp_path / "node/blobs" / blob.name).exists()


def test_disk_full(tmp_path, bundle_store):
    node = start_sim(
        "small",
        models="",
        extra=("--store", str(tmp_path / "small"), "--disk-free-mb", "0.1"),
    )
    try:
        with serve_registry(bundle_store) as registry:
            events = pull(node, f"{registry}/library/big:1")
        assert "no space left on device" in events[-1]["error"]
        assert tags(node) == {}
    finally:
        node.kill()


def test_non_streaming_pull_and_errors(sim, bundle_store):
    with serve_registry(bundle_store) as registry:
        client = ollama.Client(host=sim.url)
        assert client.pull(f"{registry}/library/tiny", insecure=True).status == (
            "success"
        )
        with pytest.raises(ollama.ResponseError) as err:
            client.pull(f"{registry}/library/nope", insecure=True)
    assert err.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("nope", "other")
    assert err.value.status_code == 404


def test_interrupted_pull_resumes_where_it_stopped(tmp_path, bundle_store):
    """A node killed mid-pull keeps its partial blob and each part's progress;
    pulled again, it asks only for the missing bytes (as Ollama resumes)."""
    doc = json.loads(
        (bundle_store / "manifests/registry.ollama.ai/library/big/1").read_bytes()
    )
    layer = max(doc["layers"], key=lambda x: x["size"])
    store = ("--store", str(tmp_path / "node"), "--part-mb", "0.5")
    slow = start_sim("n1", models="", extra=(*store, "--pull-mb-per-s", "4"))
    port = int(slow.url.rsplit(":", 1)[1])
    with serve_registry(bundle_store) as registry:
        try:
            body = {"model": f"{registry}/library/big:1", "insecure": True}
            with httpx.stream(
                "POST", slow.url + "/api/pull", json=body, timeout=60
            ) as reply:
                for line in reply.iter_lines():
                    event = json.loads(line)
                    assert "error" not in event, event
                    if (
                        event.get("digest") == layer["digest"]
                        and event["completed"] >= layer["size"] // 2
                    ):
                        break
            slow.kill()
        finally:
            slow.kill()
        blobs = tmp_path / "node" / "blobs"
        partial = blobs / (layer["digest"].replace(":", "-") + "-partial")
        assert partial.exists() and (blobs / f"{partial.name}-0").exists()
        node = start_sim("n1", models="", port=port, extra=store)
        try:
            events = pull(node, f"{registry}/library/big:1")
            assert events[-1] == {"status": "success"}
            fetched = node.stats()["pulled_bytes"]
        finally:
            node.kill()
    assert 0 < fetched <= layer["size"] * 3 // 4, "only the missing bytes"
    data = (blobs / layer["digest"].replace(":", "-")).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
    assert not [p for p in blobs.iterdir() if "partial" in p.name]
