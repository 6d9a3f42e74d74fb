"""Property: no mutation of the example manifest crashes herd; bad ones fail cleanly."""

from __future__ import annotations

import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herd.errors import ManifestError
from herd.manifest import load_bytes
from herd.manifest.plan import diff
from tests.conftest import EXAMPLE

BASE = yaml.safe_load(EXAMPLE.read_text())
BASE_FLEET = load_bytes(EXAMPLE.read_bytes())
LINE = re.compile(r"^[^:]+:\d+: \S+: .+$")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(
        ["10.0.0.0/8", "::1/128", "gpu-a", "x:y", "http://127.0.0.1:1", "-1", "30m", ""]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, (*prefix, i))


ALL_PATHS = list(paths(BASE))[1:]


def mutate(doc, path, op, value):
    import copy

    doc = copy.deepcopy(doc)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if op == "set":
        parent[key] = value
    elif op == "delete":
        del parent[key]
    elif op == "add" and isinstance(parent, dict):
        parent[f"{key}_x"] = value
    elif op == "dup" and isinstance(parent, list):
        parent.append(parent[key])
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(ALL_PATHS),
    op=st.sampled_from(["set", "delete", "add", "dup"]),
    value=values,
)
def test_mutations_never_crash(path, op, value):
    doc = mutate(BASE, path, op, value)
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    try:
        fleet = load_bytes(text.encode(), "m.yaml")
    except ManifestError as ex:
        lines = str(ex).splitlines()
        assert lines and all(LINE.match(line) for line in lines), lines
        return
    diff(BASE_FLEET, fleet)  # a valid mutation must also plan cleanly
    diff(fleet, BASE_FLEET)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data):
    try:
        load_bytes(data, "m.yaml")
    except ManifestError as ex:
        assert all(LINE.match(line) for line in str(ex).splitlines())
