"""Find and compile schemas/fleet.schema.json: the one truth about the shape.

The schema's `pattern`s are ECMA-262 regular expressions, in which `$` ends
the text; in Python's `re` it also matches before a final newline, so plain
jsonschema would let `"eth0\n"` through `^[a-z0-9]+$` (and into a
keepalived.conf, a firewall rule or a log line). `validator` checks patterns
with `$` meaning the end of the text, as the schema's authors meant.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError


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


def ecma_pattern(pattern: str) -> re.Pattern[str]:
    """`pattern` compiled with every `$` outside a character class and not
    escaped turned into `\\Z` (the end of the text, as in ECMA-262)."""
    out, escaped, in_class = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
    return re.compile("".join(out))


_compiled = functools.lru_cache(maxsize=256)(ecma_pattern)


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compiled(pattern).search(
        instance
    ):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


#: Draft 2020-12 with ECMA-262 end anchors in `pattern`.
Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _pattern}
)


@functools.cache
def validator(name: str = "fleet.schema.json") -> Any:
    """A compiled validator (building one is the slow part; do it once)."""
    doc = schema(name)
    Validator.check_schema(doc)
    return Validator(doc)
