"""Bad input: refused with a precise reason, store untouched, refusal audited.

Each case builds a good signed bundle, then damages it the way an attacker or
a bad USB stick would. Forgeries that need a valid signature are re-signed with
the trusted test key: herd must refuse them on their contents alone.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from herd.bundle import signature
from herd.bundle.catalog import Catalog
from herd.bundle.importer import import_bundle
from herd.bundle.verify import verify
from herd.errors import BundleError
from tests.bundle.bundle_helpers import (
    TEST_KEY,
    make_bundle,
    other_key,
    read_doc,
    store_files,
    swap_model_layer,
    tiny_gguf,
    write_doc,
)


def first_blob(bundle: Path, *, largest: bool = True) -> Path:
    blobs = sorted((bundle / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    return blobs[-1] if largest else blobs[0]


def unsigned(b: Path) -> None:
    (b / "bundle.yaml.sig").unlink()


def signed_by_stranger(b: Path) -> None:
    signature.sign(b, other_key(b.parent))


def signature_from_other_bundle(b: Path) -> None:
    other = make_bundle(b.parent / "other", name="other", weights=tiny_gguf(seed=9))
    shutil.copy(other / "bundle.yaml.sig", b / "bundle.yaml.sig")


def edited_after_signing(b: Path) -> None:
    path = b / "bundle.yaml"
    path.write_bytes(path.read_bytes().replace(b"name: b1", b"name: b2"))


def flipped_byte(b: Path) -> None:
    blob = first_blob(b)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))


def truncated_blob(b: Path) -> None:
    blob = first_blob(b)
    blob.write_bytes(blob.read_bytes()[:-10])


def extra_file(b: Path) -> None:
    (b / "blobs" / "README.txt").write_text("hello")


def symlink_in_tree(b: Path) -> None:
    (b / "scan" / "passwd").symlink_to("/etc/passwd")


def _retarget(b: Path, new_path: str) -> None:
    doc = read_doc(b)
    for f in doc["files"]:
        if f["path"].startswith("scan/"):
            f["path"] = new_path
    doc["scan"]["report"] = new_path
    write_doc(b, doc)


def dotdot_path(b: Path) -> None:
    _retarget(b, "scan/../../etc/passwd")


def absolute_path(b: Path) -> None:
    _retarget(b, "/etc/passwd")


def size_lies(b: Path) -> None:
    doc = read_doc(b)
    for f in doc["files"]:
        if f["path"].startswith("scan/"):
            f["size"] += 1000
    write_doc(b, doc)


def layer_not_in_bundle(b: Path) -> None:
    doc = read_doc(b)
    blob = first_blob(b, largest=False)
    doc["files"] = [f for f in doc["files"] if f["path"] != f"blobs/{blob.name}"]
    blob.unlink()
    write_doc(b, doc)


def pickle_renamed_gguf(b: Path) -> None:
    swap_model_layer(b, pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))


def torch_zip_as_gguf(b: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps([1, 2, 3]))
    swap_model_layer(b, buf.getvalue())


def absurd_gguf(b: Path) -> None:
    swap_model_layer(b, b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 2) + b"\0" * 64)


def unknown_media_type(b: Path) -> None:
    swap_model_layer(b, tiny_gguf(), media_type="application/x-shellscript")


def verdict_infected(b: Path) -> None:
    doc = read_doc(b)
    doc["scan"]["verdict"] = "infected"
    write_doc(b, doc)


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "unsigned": (unsigned, "unsigned bundle"),
    "untrusted signer": (signed_by_stranger, "signer not trusted"),
    "signature of another bundle": (signature_from_other_bundle, "bad signature"),
    "edited after signing": (edited_after_signing, "bad signature"),
    "flipped byte": (flipped_byte, "sha256 mismatch"),
    "truncated blob": (truncated_blob, "truncated or altered"),
    "extra file": (extra_file, "README.txt: not listed"),
    "symlink": (symlink_in_tree, "symbolic links are refused"),
    "dotdot path": (dotdot_path, "'..' and '.' path components are refused"),
    "absolute path": (absolute_path, "absolute paths are refused"),
    "declared size lies": (size_lies, "bundle.yaml says"),
    "layer not in bundle": (layer_not_in_bundle, "is not in the bundle"),
    "pickle renamed gguf": (pickle_renamed_gguf, "pickle data"),
    "torch zip as gguf": (torch_zip_as_gguf, "PyTorch zip checkpoint"),
    "absurd gguf counts": (absurd_gguf, "tensor count"),
    "unknown media type": (unknown_media_type, "unknown media type"),
    "scan verdict not clean": (verdict_infected, "verdict is 'infected'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bundle_is_refused_and_store_untouched(case, tmp_path, policy, state):
    damage, reason = CASES[case]
    bundle = make_bundle(tmp_path / "stick" / "b1", weights=tiny_gguf(width=64))
    damage(bundle)
    with pytest.raises(BundleError, match=reason):
        verify(bundle, policy)
    with pytest.raises(BundleError, match=reason):
        import_bundle(bundle, policy, state)
    assert store_files(policy.store) == []
    assert Catalog(state).bundles() == []
    [row] = state.audit_rows()
    assert row["action"] == "bundle.refused" and reason.split("'")[0] in row["detail"]


def test_missing_part_is_refused(tmp_path, policy, state):
    bundle = make_bundle(
        tmp_path / "b1", weights=tiny_gguf(width=1 << 16), split_size=1 << 20
    )
    part = next((bundle / "blobs").glob("*.part001"))
    part.unlink()
    with pytest.raises(BundleError, match=r"part001: missing \(part 1 of blobs/"):
        import_bundle(bundle, policy, state)
    assert store_files(policy.store) == []


def test_damaged_part_is_named(tmp_path, policy, state):
    bundle = make_bundle(
        tmp_path / "b1", weights=tiny_gguf(width=1 << 16), split_size=1 << 20
    )
    part = next((bundle / "blobs").glob("*.part002"))
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="part002: sha256 mismatch in part 2"):
        verify(bundle, policy)
    with pytest.raises(BundleError, match="part002: sha256 mismatch in part 2"):
        import_bundle(bundle, policy, state)
    assert store_files(policy.store) == []


def test_flipped_byte_in_second_blob_leaves_no_staged_first_blob(
    tmp_path, policy, state
):
    bundle = make_bundle(tmp_path / "b1", weights=tiny_gguf(width=64))
    victim = first_blob(bundle, largest=False)
    data = bytearray(victim.read_bytes())
    data[0] ^= 0x20
    victim.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        import_bundle(bundle, policy, state)
    assert store_files(policy.store) == []
    assert not (policy.store / ".staging").exists()


def test_pickle_file_is_refused_at_create(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(BundleError, match="model.gguf: refused: pickle data"):
        make_bundle(tmp_path / "out", weights=fake)
    assert not (tmp_path / "out").exists(), "no half-written bundle left behind"
    absurd = tmp_path / "absurd.gguf"
    absurd.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 33))
    with pytest.raises(BundleError, match="metadata count"):
        make_bundle(tmp_path / "out2", weights=absurd)


def test_wrong_namespace_signature_is_refused(tmp_path, policy, state):
    bundle = make_bundle(tmp_path / "b1", sign_with=None)
    import subprocess

    subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "sign",
            "-f",
            str(TEST_KEY),
            "-n",
            "file",
            str(bundle / "bundle.yaml"),
        ],
        check=True,
        capture_output=True,
    )
    with pytest.raises(BundleError, match="bad signature|not trusted"):
        import_bundle(bundle, policy, state)


def test_missing_trusted_signers_file(tmp_path, policy, state):
    bundle = make_bundle(tmp_path / "b1")
    bad = dataclasses.replace(policy, trusted_signers=tmp_path / "nope")
    with pytest.raises(BundleError, match="trusted signers file not found"):
        import_bundle(bundle, bad, state)
    assert os.path.exists(bundle / "bundle.yaml.sig")


def test_adapter_gguf_is_not_wrapped_as_a_model(tmp_path):
    from herd.bundle import gguf

    lora = gguf.encode({"general.architecture": "llama", "general.type": "adapter"}, {})
    with pytest.raises(BundleError, match="GGUF of type .adapter., not a model"):
        make_bundle(tmp_path / "out", weights=lora)
