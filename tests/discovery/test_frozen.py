"""herd.discovery.frozen: frozen dataclasses built without their __init__."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from herd.discovery.frozen import build
from herd.discovery.heartbeat import Heartbeat, parse
from herd.discovery.member import Member


def fields_of(value) -> dict:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def test_built_value_is_the_same_as_the_constructors():
    made = Member("gpu-a", "http://10.0.0.1:11434", "10.0.0.1", None, "agent", 1.0,
                  2.0, 3, inventory="ab" * 8, source="{}")  # fmt: skip
    built = build(Member, **fields_of(made))
    assert built == made
    assert repr(built) == repr(made)
    assert fields_of(built) == fields_of(made)


def test_built_value_stays_frozen():
    hb = parse({"name": "gpu-a", "url": "http://10.0.0.1:11434"})
    assert hb == Heartbeat("gpu-a", "http://10.0.0.1:11434",
                           ipaddress.ip_address("10.0.0.1"))  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        hb.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        hb.extra = 1  # type: ignore[attr-defined]


def test_every_field_must_be_given_and_no_other():
    hb = parse({"name": "gpu-a", "url": "http://10.0.0.1:11434"})
    fields = fields_of(hb)
    del fields["partial"]
    with pytest.raises(TypeError, match=r"missing \['partial'\]"):
        build(Heartbeat, **fields)
    with pytest.raises(TypeError, match=r"unknown \['color'\]"):
        build(Heartbeat, **fields_of(hb), color="red")
