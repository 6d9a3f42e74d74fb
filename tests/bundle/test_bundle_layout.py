"""bundle.yaml parsing: schema, self-consistency, and the committed example."""

from __future__ import annotations

import json

import pytest

from herd.bundle import layout
from herd.errors import BundleError
from tests.bundle.bundle_helpers import EXAMPLE, read_doc

ZERO = "0" * 64


def test_schema_is_2020_12_with_id():
    schema = json.loads(layout.schema_path().read_text())
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["$id"].endswith("bundle.schema.json")


def test_example_parses():
    doc = layout.read_index(EXAMPLE)
    assert doc.name == "example"
    assert dict(doc.models) == {"tiny:latest": "manifests/tiny/latest"}
    assert doc.scan is not None and doc.scan.verdict == "clean"


def mutate(change) -> bytes:
    doc = read_doc(EXAMPLE)
    change(doc)
    return layout.dump(doc)


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda d: d.update(extra=1), "Additional properties"),
        (lambda d: d.update(format="herd-bundle/v9"), "format"),
        (lambda d: d["files"][0].update(size=-1), r"files\[0\]\.size"),
        (lambda d: d["files"][0].update(sha256="00" * 32), "does not match the blob"),
        (lambda d: d["files"].append(dict(d["files"][0])), "listed twice"),
        (lambda d: d["files"].append({"path": "blobs/x", "size": 1, "sha256": ZERO}),
         "blobs/sha256-"),
        (lambda d: d["models"].update({"evil:1": "manifests/tiny/latest"}),
         "manifest must be manifests/evil/1"),
        (lambda d: d["scan"].update(report="scan/other.txt"), "not in files"),
        (lambda d: d["files"][0].update(path="blobs\\..\\x"), "path components"),
    ],
)  # fmt: skip
def test_inconsistent_index_is_refused(change, reason):
    with pytest.raises(BundleError, match=reason):
        layout.parse(mutate(change))


def test_parts_must_add_up_and_be_named_in_order():
    def split(d, names=("part000", "part001"), sizes=(600, 72)):
        f = d["files"][0]
        f["parts"] = [
            {"path": f"{f['path']}.{n}", "size": s, "sha256": "0" * 64}
            for n, s in zip(names, sizes, strict=True)
        ]

    layout.parse(mutate(split))
    with pytest.raises(BundleError, match="do not add up"):
        layout.parse(mutate(lambda d: split(d, sizes=(600, 1))))
    with pytest.raises(BundleError, match="part 1 must be named"):
        layout.parse(mutate(lambda d: split(d, names=("part000", "part007"))))


def test_not_yaml_is_refused():
    with pytest.raises(BundleError, match="invalid YAML"):
        layout.parse(b"files: [unclosed")
