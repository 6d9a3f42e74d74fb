"""Property tests: hostile input only ever produces a BundleError, never a crash."""

from __future__ import annotations

import io
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herd.bundle import gguf, layout
from herd.bundle.ollama import parse_manifest
from herd.errors import BundleError
from tests.bundle.bundle_helpers import EXAMPLE, read_doc, tiny_gguf

GOOD = tiny_gguf()


def try_header(data: bytes) -> None:
    try:
        gguf.read_header(io.BytesIO(data), len(data), "fuzz.gguf")
    except BundleError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_gguf_reader(data):
    try_header(b"GGUF" + struct.pack("<I", 3) + data)
    try_header(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255), st.integers(1, len(GOOD)))
def test_mutated_gguf_never_crashes(pos, value, cut):
    data = bytearray(GOOD)
    data[pos] = value
    try_header(bytes(data))
    try_header(bytes(data[:cut]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["format", "name", "created", "models", "files", "scan", "x"]),
    json_values,
)
def test_mangled_bundle_yaml_is_refused_cleanly(key, value):
    doc = read_doc(EXAMPLE)
    doc[key] = value
    try:
        layout.parse(layout.dump(doc))
    except BundleError:
        pass


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_mangled_manifest_is_refused_cleanly(value):
    import json

    raw = (EXAMPLE / "manifests/tiny/latest").read_bytes()
    doc = json.loads(raw)
    for key in ("layers", "config", "schemaVersion", "mediaType"):
        mangled = dict(doc, **{key: value})
        try:
            parse_manifest(json.dumps(mangled).encode(), "m")
        except BundleError:
            pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["files", "scan", "models"]),
    st.sampled_from(["path", "size", "sha256", "parts", "report", "verdict", "x"]),
    json_values,
)
def test_mangled_nested_fields_are_refused_cleanly(section, key, value):
    doc = read_doc(EXAMPLE)
    target = doc[section][0] if section == "files" else doc[section]
    target[key] = value
    try:
        layout.parse(layout.dump(doc))
    except BundleError:
        pass
