"""Find and compile schemas/fleet.schema.json: the one truth about the shape."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema


def schema_path(name: str = "fleet.schema.json") -> Path:
    """The schema file: in the source tree, else where `pip install` put it."""
    candidates = (
        Path(__file__).resolve().parents[2] / "schemas" / name,
        Path(sys.prefix) / "share" / "herd" / "schemas" / name,
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"schema {name} not found in {', '.join(map(str, candidates))}"
    )


@functools.cache
def schema(name: str = "fleet.schema.json") -> dict[str, Any]:
    return json.loads(schema_path(name).read_text(encoding="utf-8"))


@functools.cache
def validator(name: str = "fleet.schema.json") -> jsonschema.Draft202012Validator:
    """A compiled validator (building one is the slow part; do it once)."""
    doc = schema(name)
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)
