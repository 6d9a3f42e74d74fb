"""`herd bundle import --from-peer`: a bundle from the other router's registry.

The peer is the real registry app (falcon) behind a real HTTP server on
loopback, serving a store filled by a real import. The receiving side must
verify exactly as a USB import does: tampered bytes anywhere are refused and
its store stays untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from herd.bundle import kept
from herd.bundle.importer import import_bundle
from herd.bundle.peer import Peer, fetch_bundle, staging_dir
from herd.errors import BundleError
from tests.bundle.bundle_helpers import (
    ALLOWED,
    ROOT,
    big_gguf,
    make_bundle,
    store_files,
)
from tests.bundle.peerserver import registry_app, serve

NAME = "split1"


@pytest.fixture
def peer_store(tmp_path, state_dir) -> Path:
    """The peer's store: a split bundle (parts) imported the USB way."""
    from herd.bundle.policy import Policy
    from herd.store import Store

    weights = big_gguf(tmp_path / "w.gguf", 300_000)
    bundle = make_bundle(
        tmp_path / "stick" / NAME, name=NAME, weights=weights, split_size=100_000
    )
    store = tmp_path / "peer-store"
    pol = Policy(trusted_signers=ALLOWED, require_scan=True, store=store)
    state = Store(tmp_path / "peer-state")
    try:
        import_bundle(bundle, pol, state)
    finally:
        state.close()
    assert (store / kept.KEPT / NAME / "bundle.yaml").is_file()
    return store


@pytest.fixture
def peer_url(peer_store) -> Iterator[str]:
    yield from serve(registry_app(peer_store))


def test_fetched_bundle_imports_like_the_stick(peer_url, peer_store, policy, state):
    staging = staging_dir(state.dir, NAME)
    seen: list[int] = []
    root = fetch_bundle(
        Peer(peer_url), NAME, staging, policy, progress=lambda t: seen.append
    )
    result = import_bundle(root, policy, state)
    assert result.models == ("tiny:latest",)
    # Byte for byte what the peer holds: blobs, manifests and the kept index.
    assert store_files(policy.store) == store_files(peer_store)
    for path in (kept.KEPT + f"/{NAME}/bundle.yaml", kept.KEPT + f"/{NAME}/scan"):
        assert (policy.store / path).exists()


def test_tampered_blob_on_the_peer_is_refused(peer_url, peer_store, policy, state):
    blob = max((peer_store / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[150_000] ^= 0xFF  # same size, one byte flipped, in the second part
    blob.write_bytes(bytes(data))
    staging = staging_dir(state.dir, NAME)
    root = fetch_bundle(Peer(peer_url), NAME, staging, policy)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        import_bundle(root, policy, state)
    assert store_files(policy.store) == []


def test_tampered_index_on_the_peer_is_refused_before_any_blob(
    peer_url, peer_store, policy, state
):
    index = peer_store / kept.KEPT / NAME / "bundle.yaml"
    doc = yaml.safe_load(index.read_bytes())
    doc["created"] = "2000-01-01T00:00:00Z"
    index.write_bytes(yaml.safe_dump(doc).encode())
    staging = staging_dir(state.dir, NAME)
    with pytest.raises(BundleError, match="signature"):
        fetch_bundle(Peer(peer_url), NAME, staging, policy)
    assert not (staging / "blobs").exists()  # nothing else was asked for
    assert store_files(policy.store) == []


def test_peer_sending_more_than_signed_is_refused(peer_store, policy, state):
    app = registry_app(peer_store)

    def longer(environ, start_response):  # noqa: ANN001, ANN202
        if "/blobs/" not in environ["PATH_INFO"]:
            return app(environ, start_response)
        body = b"".join(app(environ, lambda *a: None)) + b"extra"
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        # Chunks and no Content-Length: the receiver must count for itself.
        return iter([body[:10], body[10:]])

    for url in serve(longer):
        with pytest.raises(BundleError, match="more than the .* bytes"):
            fetch_bundle(Peer(url), NAME, staging_dir(state.dir, NAME), policy)
    assert store_files(policy.store) == []


def test_cli_imports_from_peer(peer_url, tmp_path, state_dir):
    env = {**os.environ, "HERD_STATE_DIR": str(state_dir)}
    args = ["--trusted-signers", str(ALLOWED), "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "herd", "bundle", "import", "--from-peer", peer_url,
         NAME, *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"models"' in done.stdout and "tiny:latest" in done.stdout
    assert not (state_dir / "peer-staging" / NAME).exists()  # staging removed


def test_bad_names_and_host_names_are_refused_before_any_request(state_dir):
    with pytest.raises(BundleError, match="not a bundle name"):
        staging_dir(state_dir, "../etc")
    with pytest.raises(BundleError, match="/etc/hosts"):
        Peer("http://peer.invalid:11435")  # herd never asks DNS


def test_peer_routers_may_read_the_registry_and_nobody_else():
    from herd.manifest import load_bytes
    from herd.router.policy import Policy

    text = (ROOT / "etc" / "fleet.yaml").read_text()
    doc = yaml.safe_load(text)
    doc["router"]["ha"] = {
        "virtual_address": "10.20.0.10",
        "interface": "eth0",
        "peers": ["10.20.0.11", "10.20.0.12"],
        "auth_secret_file": "/etc/herd/vrrp.secret",
    }
    fleet = load_bytes(yaml.safe_dump(doc).encode(), "t", str(ROOT / "etc"))
    policy = Policy(fleet)
    assert policy.may_pull("10.20.0.12") and policy.may_pull("10.20.0.11")
    assert not policy.may_pull("10.20.0.13")
