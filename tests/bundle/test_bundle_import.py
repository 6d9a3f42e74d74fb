"""Import end to end in-process: real files, real ssh-keygen, real SQLite."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import pytest

from herd.bundle import policy as policy_mod
from herd.bundle.catalog import Catalog
from herd.bundle.importer import import_bundle
from herd.bundle.ollama import ModelStore
from herd.bundle.removal import remove_bundle
from herd.bundle.verify import verify
from herd.errors import BundleError
from tests.bundle.bundle_helpers import (
    ALLOWED,
    EXAMPLE,
    PRINCIPAL,
    make_bundle,
    manifest_json,
    read_doc,
    sha,
    store_files,
    tiny_gguf,
    verify_store_blobs,
)


def audit_actions(state) -> list[str]:
    return [r["action"] for r in reversed(state.audit_rows())]


def test_example_bundle_verifies_and_imports(policy, state):
    checked = verify(EXAMPLE, policy)
    assert checked.signer == PRINCIPAL
    result = import_bundle(EXAMPLE, policy, state)
    assert result.models == ("tiny:latest",)
    assert len(result.copied) == 4 and not result.skipped
    store = ModelStore(policy.store)
    raw = store.manifest_path("tiny:latest").read_bytes()
    assert raw == (EXAMPLE / "manifests/tiny/latest").read_bytes()  # verbatim
    assert verify_store_blobs(policy.store) == 4
    [row] = Catalog(state).models()
    assert row.digest == "sha256:" + sha(raw)
    assert row.bundle == "example"
    [bundle] = Catalog(state).bundles()
    assert bundle["signer"] == PRINCIPAL and bundle["scan_verdict"] == "clean"
    assert audit_actions(state) == ["bundle.import"]


def test_reimport_is_idempotent(policy, state):
    import_bundle(EXAMPLE, policy, state)
    before = {p: (policy.store / p).stat().st_ino for p in store_files(policy.store)}
    again = import_bundle(EXAMPLE, policy, state)
    assert not again.copied and len(again.skipped) == 4 and again.bytes_to_copy == 0
    after = {p: (policy.store / p).stat().st_ino for p in store_files(policy.store)}
    assert set(after) == set(before)
    assert all(after[p] == before[p] for p in after if p.startswith("blobs/"))
    assert len(Catalog(state).models()) == 1


def test_dry_run_writes_nothing(policy, state):
    result = import_bundle(EXAMPLE, policy, state, dry_run=True)
    assert result.dry_run and result.bytes_to_copy == 955
    assert store_files(policy.store) == []
    assert Catalog(state).models() == []


def test_split_blobs_are_reassembled(tmp_path, policy, state):
    weights = tiny_gguf(width=1 << 16)  # ~2 MiB of tensors -> 3 parts of 1 MiB
    bundle = make_bundle(tmp_path / "split", weights=weights, split_size=1 << 20)
    doc = read_doc(bundle)
    [split] = [f for f in doc["files"] if "parts" in f]
    assert len(split["parts"]) == 3
    assert not (bundle / split["path"]).exists()
    assert all(p["size"] <= 1 << 20 for p in split["parts"])
    import_bundle(bundle, policy, state)
    blob = policy.store / split["path"]
    assert blob.read_bytes() == weights
    verify_store_blobs(policy.store)


def test_rm_keeps_blobs_other_models_use(tmp_path, policy, state):
    shared = tiny_gguf(seed=3)
    a = make_bundle(tmp_path / "a", name="a", model="a:1", weights=shared, template="A")
    b = make_bundle(tmp_path / "b", name="b", model="b:1", weights=shared, template="B")
    import_bundle(a, policy, state)
    import_bundle(b, policy, state)
    weights_blob = policy.store / "blobs" / f"sha256-{sha(shared)}"
    template_a = policy.store / "blobs" / f"sha256-{sha(b'A')}"
    assert weights_blob.exists() and template_a.exists()
    removal = remove_bundle(state, policy.store, "a")
    assert removal.models == ("a:1",)
    assert not template_a.exists()
    assert weights_blob.exists()  # still used by b:1
    assert not ModelStore(policy.store).manifest_path("a:1").exists()
    assert [m.name for m in Catalog(state).models()] == ["b:1"]
    remove_bundle(state, policy.store, "b")
    assert store_files(policy.store) == []
    assert audit_actions(state)[-2:] == ["bundle.remove", "bundle.remove"]
    with pytest.raises(BundleError, match="no imported bundle named 'b'"):
        remove_bundle(state, policy.store, "b")


def test_install_into_ollama_store_preserves_owner(tmp_path, policy, state):
    models = tmp_path / "ollama" / "models"
    models.mkdir(parents=True)
    owner = (4321, 4321) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(models, *owner)  # as root: a store owned by another user (ollama)
    stick = tmp_path / "stick"
    shutil.copytree(EXAMPLE, stick)
    old = time.time() - 7200
    for path in stick.rglob("*"):
        os.utime(path, (old, old))  # files on the stick are old
    result = import_bundle(stick, policy, state, ollama_models=models)
    assert result.installed == ("tiny:latest",)
    manifest = models / "manifests/registry.ollama.ai/library/tiny/latest"
    assert manifest.read_bytes() == (EXAMPLE / "manifests/tiny/latest").read_bytes()
    for path in [manifest, *(models / "blobs").iterdir(), manifest.parent]:
        st = path.stat()
        assert (st.st_uid, st.st_gid) == owner, path
        assert st.st_mtime > time.time() - 600, "fresh mtimes (Ollama prunes old)"
    assert verify_store_blobs(models) == 4
    # Nothing stray for Ollama's glob: only the one manifest file below manifests/.
    found = [p for p in (models / "manifests").rglob("*") if p.is_file()]
    assert found == [manifest]
    assert "bundle.install" in audit_actions(state)


def test_policy_from_manifest_file_resolves_relative_paths(tmp_path, state_dir):
    site = tmp_path / "site"
    (site / "keys").mkdir(parents=True)
    (site / "keys" / "allowed_signers").write_bytes(ALLOWED.read_bytes())
    (site / "fleet.yaml").write_text(
        "apiVersion: herd/v1\nkind: Fleet\nmetadata: {name: t}\n"
        "router: {listen: '127.0.0.1:11435', node_networks: [127.0.0.0/8]}\n"
        "nodes: [{name: n1, url: 'http://127.0.0.1:11434'}]\n"
        "models: [{name: 'tiny:latest', place: {nodes: [n1]}}]\n"
        "bundles: {trusted_signers: keys/allowed_signers, store: blobstore,"
        " require_scan: true}\n"
    )
    pol = policy_mod.resolve(state_dir, manifest=site / "fleet.yaml")
    assert pol.trusted_signers == site / "keys" / "allowed_signers"
    assert pol.store == site / "blobstore"
    assert pol.require_scan is True


def test_no_trusted_signers_is_refused(state_dir):
    with pytest.raises(BundleError, match="never imports unsigned"):
        policy_mod.resolve(state_dir)
    assert policy_mod.store_path(state_dir) == state_dir / "store"


def test_scan_not_required_accepts_builtin_only_bundle(tmp_path, policy, state):
    bundle = make_bundle(tmp_path / "noscan", verdict=None)
    with pytest.raises(BundleError, match="no scan report"):
        import_bundle(bundle, policy, state)
    relaxed = dataclasses.replace(policy, require_scan=False)
    result = import_bundle(bundle, relaxed, state)
    assert result.models == ("tiny:latest",)
    assert read_doc(bundle)["scan"]["tool"] == "herd-builtin"


def test_external_scanner_runs_per_file(tmp_path, policy, state):
    log = tmp_path / "scanned.txt"
    scanner = tmp_path / "scanner.sh"
    scanner.write_text(f'#!/bin/sh\necho "$1" >> {log}\nexit 0\n')
    scanner.chmod(0o755)
    ok = dataclasses.replace(policy, scan_command=f"{scanner} {{path}}")
    import_bundle(EXAMPLE, ok, state)
    assert len(log.read_text().splitlines()) == 4
    refusing = tmp_path / "refuse.sh"
    refusing.write_text("#!/bin/sh\necho 'FOUND: Eicar-Test-Signature'\nexit 1\n")
    refusing.chmod(0o755)
    bad = dataclasses.replace(
        policy, store=tmp_path / "store2", scan_command=f"{refusing} {{path}}"
    )
    with pytest.raises(BundleError, match="refused by scanner.*Eicar"):
        import_bundle(EXAMPLE, bad, state)
    assert store_files(tmp_path / "store2") == []


def test_from_gguf_manifest_is_what_ollama_create_writes(tmp_path):
    bundle = make_bundle(tmp_path / "g", params={"stop": ["</s>"]})
    raw_path = bundle / "manifests/tiny/latest"
    raw = raw_path.read_bytes()
    assert raw.endswith(b"}\n") and b" " not in raw  # json.Encoder, compact + \n
    doc = manifest_json(bundle)
    kinds = [layer["mediaType"].rsplit(".", 1)[-1] for layer in doc["layers"]]
    assert kinds == ["model", "template", "params"]
    config = json.loads(
        (bundle / "blobs" / doc["config"]["digest"].replace(":", "-")).read_bytes()
    )
    assert config["model_format"] == "gguf" and config["model_family"] == "llama"
    assert config["file_type"] == "F16"
    for layer in [*doc["layers"], doc["config"]]:
        blob = bundle / "blobs" / layer["digest"].replace(":", "-")
        assert blob.stat().st_size == layer["size"]
        assert "sha256:" + sha(blob.read_bytes()) == layer["digest"]


def test_create_from_ollama_store_keeps_manifest_bytes(tmp_path, policy, state):
    models = tmp_path / "ollama"
    models.mkdir()
    import_bundle(EXAMPLE, policy, state, ollama_models=models)
    from herd.bundle.create import create_bundle

    out = create_bundle(
        tmp_path / "repacked", ollama_store=models, ollama_models=("tiny",)
    )
    assert (out / "manifests/tiny/latest").read_bytes() == (
        EXAMPLE / "manifests/tiny/latest"
    ).read_bytes()
    assert sorted(p.name for p in (out / "blobs").iterdir()) == sorted(
        p.name for p in (EXAMPLE / "blobs").iterdir()
    )
    with pytest.raises(BundleError, match="no manifest"):
        create_bundle(tmp_path / "x", ollama_store=models, ollama_models=("nope:1",))


def test_rm_uses_the_store_the_bundle_went_to(tmp_path, policy, state):
    from herd.bundle.removal import bundle_store

    import_bundle(EXAMPLE, policy, state)
    assert bundle_store(state, "example", tmp_path / "elsewhere") == policy.store
    assert Catalog(state).bundle("example")["store"] == str(policy.store)
