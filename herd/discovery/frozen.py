"""Frozen dataclasses built without their generated `__init__`, for the values
made once per heartbeat (herd.discovery.heartbeat, herd.discovery.membership).

A frozen dataclass's `__init__` sets each field through `object.__setattr__`:
for the 12 fields of a `Heartbeat` and the 16 of a `Member`, built for every
beat of hundreds of agents, that is most of their cost. `build` gives the same
instance (equal, hashable, still frozen) for a few per cent of it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

_FIELDS: dict[type, frozenset[str]] = {}


def build(cls: type[T], /, **fields: Any) -> T:
    """An instance of the frozen dataclass `cls` holding `fields`, which must
    name every one of its fields: no default is filled in and no
    `__post_init__` runs, so a field left out is a TypeError here rather
    than an AttributeError later."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    if fields.keys() != names:
        raise TypeError(
            f"{cls.__name__} needs exactly its fields: "
            f"missing {sorted(names - fields.keys())}, "
            f"unknown {sorted(fields.keys() - names)}"
        )
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", fields)
    return obj
