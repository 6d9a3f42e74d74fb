"""Property tests: hostile input only ever produces a BundleError, never a crash.

The `..._is_refused_cleanly` tests assert the refusal itself: a mangled
bundle.yaml (signed by the trusted key, so only its content can be judged) or
manifest must raise BundleError, except for the few values the format allows
in that place, which must be accepted.
"""

from __future__ import annotations

import copy
import io
import json
import re
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herd.bundle import gguf, layout, signature
from herd.bundle.ollama import parse_manifest
from herd.bundle.policy import Policy
from herd.bundle.scan import MANIFEST
from herd.bundle.verify import check
from herd.errors import BundleError
from tests.bundle.bundle_helpers import ALLOWED, EXAMPLE, TEST_KEY, read_doc, tiny_gguf

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

ORIGINAL = read_doc(EXAMPLE)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


@pytest.fixture(scope="module")
def stick(tmp_path_factory) -> Path:
    """A copy of the example bundle whose bundle.yaml the tests rewrite and sign."""
    root = tmp_path_factory.mktemp("fuzz") / "example"
    shutil.copytree(EXAMPLE, root)
    return root


def refused(stick: Path, doc: dict) -> bool:
    """True when herd refuses `doc` (signed by a trusted key) with a BundleError.

    Any other exception fails the test. The full check (signature, tree,
    manifests, scan policy) runs only when the parse alone accepts the doc.
    """
    data = layout.dump(doc)
    try:
        layout.parse(data)
    except BundleError:
        return True
    (stick / layout.INDEX).write_bytes(data)
    signature.sign(stick, TEST_KEY)
    policy = Policy(ALLOWED, require_scan=True, store=stick.parent / "store")
    try:
        check(stick, policy)
    except BundleError:
        return True
    return False


def acceptable_top(key: str, value: object) -> bool:
    """The few top-level values a valid bundle may hold instead of the original."""
    if key == "format":
        return value == "herd-bundle/v1"
    if key == "name":
        return isinstance(value, str) and bool(NAME_RE.match(value))
    if key == "created":
        return isinstance(value, str)
    if key == "scan" and isinstance(value, dict):
        free = {"tool", "version", "date", "builtin"}
        return (
            set(value) <= free | {"verdict", "report"}
            and all(isinstance(value.get(k, ""), str) for k in free)
            and "tool" in value
            and value.get("verdict") == "clean"
            and value.get("report") == ORIGINAL["scan"]["report"]
        )
    return False


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(["format", "name", "created", "models", "files", "scan", "x"]),
    json_values,
)
def test_mangled_bundle_yaml_is_refused_cleanly(stick, key, value):
    doc = copy.deepcopy(ORIGINAL)
    doc[key] = value
    assert refused(stick, doc) is not acceptable_top(key, value), (key, value)


MANIFEST_RAW = (EXAMPLE / "manifests/tiny/latest").read_bytes()


def acceptable_manifest(key: str, value: object) -> bool:
    if key == "schemaVersion":
        return value == 2 and not isinstance(value, bool)
    if key == "mediaType":
        return value == MANIFEST
    return key == "config" and value is None  # a manifest without a config


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_mangled_manifest_is_refused_cleanly(value):
    doc = json.loads(MANIFEST_RAW)
    for key in ("layers", "config", "schemaVersion", "mediaType"):
        mangled = json.dumps(dict(doc, **{key: value})).encode()
        if acceptable_manifest(key, value):
            parse_manifest(mangled, "m")
            continue
        with pytest.raises(BundleError, match="^m: "):
            parse_manifest(mangled, "m")


def acceptable_nested(section: str, key: str, value: object) -> bool:
    """Values a valid bundle may hold at doc[section][...][key]."""
    if section == "files":
        return key in ("path", "size", "sha256") and value == ORIGINAL["files"][0][key]
    if section == "scan":
        if key == "verdict":
            return value == "clean"
        if key == "report":
            return value == ORIGINAL["scan"]["report"]
    return False  # models: "path", "size"... are not model names


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(["files", "scan", "models"]),
    st.sampled_from(["path", "size", "sha256", "parts", "report", "verdict", "x"]),
    json_values,
)
def test_mangled_nested_fields_are_refused_cleanly(stick, section, key, value):
    doc = copy.deepcopy(ORIGINAL)
    target = doc[section][0] if section == "files" else doc[section]
    target[key] = value
    expected = not acceptable_nested(section, key, value)
    assert refused(stick, doc) is expected, (section, key, value)


def test_values_the_format_allows_are_accepted(stick):
    """The other side of the oracle: allowed values pass the full check."""
    for key, value in (("name", "other-name"), ("created", "yesterday")):
        assert acceptable_top(key, value)
        assert not refused(stick, {**copy.deepcopy(ORIGINAL), key: value})
    doc = copy.deepcopy(ORIGINAL)
    doc["scan"]["verdict"] = "infected"
    assert refused(stick, doc) and not acceptable_nested("scan", "verdict", "infected")
