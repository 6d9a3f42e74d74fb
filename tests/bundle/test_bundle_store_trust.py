"""What is already on disk is trusted only by its hash; copies read what was declared.

A file of the right size under a blob's name proves nothing. Blobs already in
the store, staged by an earlier run, or in a local Ollama store count only once
re-hashed; the stick's copy is checked even when nothing is copied, so import
and verify agree. Sources swapped after the checks (a link to /dev/zero, a
longer file) are refused, never copied.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from herd.bundle.catalog import Catalog
from herd.bundle.importer import import_bundle
from herd.bundle.ollama import ModelStore
from herd.bundle.verify import verify
from herd.errors import BundleError
from tests.bundle.bundle_helpers import (
    ALLOWED,
    ROOT,
    make_bundle,
    read_doc,
    tiny_gguf,
    verify_store_blobs,
    write_doc,
)


def blob_files(bundle: Path) -> list[Path]:
    return sorted((bundle / "blobs").iterdir(), key=lambda p: p.stat().st_size)


def garbage_like(path: Path) -> None:
    """Same size, other bytes (what a bad disk or a hand copy leaves)."""
    path.write_bytes(b"\xa5" * path.stat().st_size)


def test_garbage_of_the_right_size_in_the_store_is_replaced(tmp_path, policy, state):
    bundle = make_bundle(tmp_path / "b1", weights=tiny_gguf(width=64))
    import_bundle(bundle, policy, state)
    store = ModelStore(policy.store)
    victim = policy.store / "blobs" / blob_files(bundle)[-1].name
    garbage_like(victim)

    again = import_bundle(bundle, policy, state)

    digest = "sha256:" + victim.name[7:]
    assert digest in again.copied and digest not in again.skipped
    # Every file the /v2 registry serves from the store hashes to its name again.
    assert verify_store_blobs(policy.store) == len(list(store.blobs_dir.iterdir()))


def test_damaged_bundle_is_refused_even_when_its_blobs_are_stored(
    tmp_path, policy, state
):
    """A flipped byte on the stick: import says what verify says, stored or not."""
    bundle = make_bundle(tmp_path / "b1", weights=tiny_gguf(width=64))
    import_bundle(bundle, policy, state)
    blob = blob_files(bundle)[-1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    with pytest.raises(BundleError, match="sha256 mismatch") as by_verify:
        verify(bundle, policy)
    with pytest.raises(BundleError, match="sha256 mismatch") as by_import:
        import_bundle(bundle, policy, state)

    assert str(by_import.value) == str(by_verify.value)
    actions = [row["action"] for row in state.audit_rows()]
    assert sorted(actions) == ["bundle.import", "bundle.refused"]
    assert verify_store_blobs(policy.store) == 4


def test_garbage_left_in_staging_is_not_trusted(tmp_path, policy, state):
    bundle = make_bundle(tmp_path / "b1", weights=tiny_gguf(width=64))
    staging = policy.store / ".staging" / "b1"
    staging.mkdir(parents=True)
    for blob in blob_files(bundle):
        (staging / blob.name).write_bytes(b"\x00" * blob.stat().st_size)

    done = import_bundle(bundle, policy, state)

    assert len(done.copied) == 4
    assert verify_store_blobs(policy.store) == 4


def test_garbage_in_the_local_ollama_store_is_replaced(tmp_path, policy, state):
    bundle = make_bundle(tmp_path / "b1", weights=tiny_gguf(width=64))
    ollama = tmp_path / "ollama-models"
    (ollama / "blobs").mkdir(parents=True)
    blob = blob_files(bundle)[-1]
    (ollama / "blobs" / blob.name).write_bytes(b"\x5a" * blob.stat().st_size)

    import_bundle(bundle, policy, state, ollama_models=ollama)

    assert verify_store_blobs(ollama) == 4


def add_case_twin(bundle: Path, twin: str) -> None:
    """Re-sign `bundle` with a second name for its model, differing only in case."""
    doc = read_doc(bundle)
    name, rel = next(iter(doc["models"].items()))
    model, tag = twin.split(":")
    new_rel = f"manifests/{model}/{tag}"
    (bundle / new_rel).parent.mkdir(parents=True)
    (bundle / new_rel).write_bytes((bundle / rel).read_bytes())
    entry = next(f for f in doc["files"] if f["path"] == rel)
    doc["files"].append({**entry, "path": new_rel})
    doc["models"][twin] = new_rel
    write_doc(bundle, doc)


def test_model_names_differing_only_in_case_are_refused(tmp_path, policy, state):
    bundle = make_bundle(tmp_path / "b1")
    add_case_twin(bundle, "TINY:latest")
    with pytest.raises(BundleError, match="TINY:latest: collides with tiny:latest"):
        verify(bundle, policy)
    with pytest.raises(BundleError, match="collides with tiny:latest"):
        import_bundle(bundle, policy, state)
    assert Catalog(state).bundles() == []


def test_case_twin_of_a_stored_model_is_refused(tmp_path, policy, state):
    import_bundle(make_bundle(tmp_path / "b1"), policy, state)
    twin = make_bundle(
        tmp_path / "b2", name="b2", model="TINY:latest", weights=tiny_gguf(seed=3)
    )
    with pytest.raises(BundleError, match="TINY:latest: collides with tiny:latest"):
        import_bundle(twin, policy, state)
    assert [m.name for m in Catalog(state).models()] == ["tiny:latest"]


SWAPPER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from herd.bundle import layout
    from herd.bundle.importer import import_bundle
    from herd.bundle.policy import Policy
    from herd.bundle.verify import verify
    from herd.errors import BundleError
    from herd.store import Store

    command, bundle, victim, how, store, signers, state = sys.argv[1:]
    real_check_tree = layout.check_tree

    def check_tree_then_swap(root, doc):
        real_check_tree(root, doc)  # every check passed: now change the file
        path = Path(victim)
        if how == "devzero":
            path.unlink()
            path.symlink_to("/dev/zero")
        else:
            with open(path, "ab") as fh:
                fh.write(b"x" * (1 << 20))

    layout.check_tree = check_tree_then_swap
    policy = Policy(Path(signers), True, Path(store))
    try:
        if command == "verify":
            verify(Path(bundle), policy)
        else:
            import_bundle(Path(bundle), policy, Store(Path(state)))
    except BundleError as ex:
        print("refused:", ex)
        sys.exit(1)
    print("accepted")
    """
)


def _safety_limits() -> None:
    """A regression must fail the test, not fill the disk or spin forever."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


@pytest.mark.parametrize("command", ["import", "verify"])
@pytest.mark.parametrize(
    ("how", "reason"),
    [("devzero", "a symbolic link; refused"), ("longer", "bundle.yaml says")],
)
def test_source_swapped_after_the_checks_is_refused(
    command, how, reason, tmp_path, policy
):
    bundle = make_bundle(tmp_path / "b1", weights=tiny_gguf(width=64))
    victim = blob_files(bundle)[-1]
    done = subprocess.run(
        [
            sys.executable, "-c", SWAPPER, command, str(bundle), str(victim), how,
            str(policy.store), str(ALLOWED), str(tmp_path / "state"),
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        preexec_fn=_safety_limits, check=False,
    )  # fmt: skip
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout.startswith("refused: blobs/sha256-"), done.stdout
    assert reason in done.stdout
    staged = policy.store / ".staging"
    assert not staged.exists() or not any(staged.rglob("*"))


def test_create_still_follows_a_link_the_user_names(tmp_path, policy, state):
    """Connected side: `--from-gguf` through a link (e.g. a model cache) is fine."""
    real = tmp_path / "cache" / "blob-0123"
    real.parent.mkdir()
    real.write_bytes(tiny_gguf())
    link = tmp_path / "model.gguf"
    link.symlink_to(real)
    bundle = make_bundle(tmp_path / "b1", weights=link)
    assert import_bundle(bundle, policy, state).models == ("tiny:latest",)
