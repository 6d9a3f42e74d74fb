"""Request bodies parsed strictly, so what a node reads is what the router checked.

Nodes decode JSON with Go's encoding/json, which reads some bodies differently
from Python's `json`. Where the two could disagree, the body is refused (400,
naming the field) instead of being forwarded:

- **Keys that collide after case folding, at any depth.** Go matches a key to
  a struct field case-insensitively (with Unicode simple folding, so `Model`,
  `MODEL`, `ſtream` and `\\u212aeep_alive` all reach a field) and, for a key
  given twice, the last one wins (and two objects merge). `{"model": "a",
  "Model": "b"}` would pass the allowlist as `a` and run `b`. Any object whose
  keys are equal after folding is refused, exact duplicates included.
- **Numbers that are not finite.** Python accepts `NaN`, `Infinity` and
  `1e999` (inf) and writes them back as invalid JSON; Go refuses them.
- **Deep nesting.** Python's parser recurses, and so does whatever walks the
  result: nesting beyond `MAX_DEPTH` is refused (checked only when the body
  holds more brackets than that, strings included, so usually not at all).
- **Anything but UTF-8** (a BOM, UTF-16): Go reads UTF-8 only.

The common case costs a cheap hook per object and two `str.count` calls; the
work that finds and names an offending field runs only on refusal.
"""

from __future__ import annotations

import json
from typing import Any

from herd.errors import InvalidRequest

#: Deepest nesting of objects and arrays accepted in a body (Go allows 10000,
#: Python's parser fails near 1000; real requests stay far below this).
MAX_DEPTH = 100

#: The four non-ASCII letters Go's key folding maps onto ASCII ones
#: (unicode.ToUpper(unicode.ToLower(r))): every other rune folds to non-ASCII.
_GO_FOLDS_TO_ASCII = str.maketrans(
    {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}
)

_INF = float("inf")


def fold(key: str) -> str:
    """The key as Go's case-insensitive field matching sees it (lowercased)."""
    if key.isascii():
        return key.lower()
    return key.translate(_GO_FOLDS_TO_ASCII).lower()


class _Refused(Exception):
    """Raised by the fast parser's hooks; the slow pass then names the field."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused
    if len(obj) > 1:
        keys = "".join(obj)
        # Keys can only collide when one has an upper-case or non-ASCII letter.
        if not (keys.isascii() and keys.islower()):
            if len({fold(k) for k in obj}) != len(obj):
                raise _Refused
    return obj


def _constant(name: str) -> Any:
    raise _Refused


def _float(text: str) -> float:
    value = float(text)
    if value == _INF or value == -_INF:
        raise _Refused
    return value


def _int(text: str) -> int:
    # Nodes read numbers as float64: an integer beyond its range is not finite.
    if len(text) >= 300 and abs(float(text)) == _INF:
        raise _Refused
    return int(text)


_scan = json.JSONDecoder(
    object_pairs_hook=_object,
    parse_constant=_constant,
    parse_float=_float,
    parse_int=_int,
).scan_once
_space = json.decoder.WHITESPACE.match
_OPENERS = frozenset("{[")


def _fast(text: str) -> Any:
    """`JSONDecoder.decode` with the hooks above, calling the C scanner
    directly (decode's own Python frames cost as much as scanning a small
    body); same errors, same messages."""
    # (A body usually starts and ends with a bracket: no whitespace to skip.)
    start = 0 if text[:1] in _OPENERS else _space(text, 0).end()
    try:
        value, end = _scan(text, start)
    except StopIteration as ex:
        raise json.JSONDecodeError("Expecting value", text, ex.value) from None
    if end != len(text):
        end = _space(text, end).end()
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return value


def deeper_than(value: Any, limit: int) -> bool:
    """True when arrays and objects nest more than `limit` levels in `value`
    (walked without recursion; stops at the first path that is too deep)."""
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        items = node.values() if isinstance(node, dict) else node
        for item in items:
            if isinstance(item, dict | list):
                if level >= limit:
                    return True
                stack.append((item, level + 1))
    return False


def parse(data: bytes | str, what: str = "request body") -> Any:
    """`data` as JSON, refused (InvalidRequest naming the field) where a node
    could read it differently (see the module docstring)."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as ex:
            raise InvalidRequest(
                f"{what} is not UTF-8 (byte {ex.start} is not valid)"
            ) from ex
    else:
        text = data
    try:
        value = _fast(text)
    except _Refused:
        value = None
    except RecursionError:
        # Python's parser recurses: far beyond MAX_DEPTH it runs out of stack.
        raise _too_deep(what) from None
    except ValueError as ex:
        raise InvalidRequest(f"{what} is not valid JSON: {ex}") from ex
    else:
        # Only a body with more brackets than the limit can nest that deep.
        if (
            isinstance(value, dict | list)
            and text.count("[") + text.count("{") > MAX_DEPTH
            and deeper_than(value, MAX_DEPTH)
        ):
            raise _too_deep(what)
        return value
    found = _explain(text)
    if found is None:
        raise _too_deep(what)
    path, problem = found
    where = f"{what}: field '{path}'" if path else what
    raise InvalidRequest(f"{where} {problem}", param=path or None)


def _exact_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused
    return obj


_scan_exact = json.JSONDecoder(
    object_pairs_hook=_exact_object, parse_constant=_constant, parse_float=_float
).scan_once


def parse_router_only(data: bytes, what: str) -> Any:
    """`parse` for a body nothing but the router reads (a heartbeat): the same
    refusals, except that keys are compared exactly, not also folded by case as
    for bodies a Go node reads, and integers take the C scanner's own path (no
    Python call per number; Python reads them exactly). Faster on a body full
    of numbers; anything refused or unusual (leading white space) goes to
    `parse`, which decides and names the field."""
    try:
        text = data.decode()
        value, end = _scan_exact(text, 0)
    except (_Refused, ValueError, StopIteration, RecursionError):
        # (UnicodeDecodeError is a ValueError.)
        return parse(data, what)
    if end != len(text) or (
        text.count("[") + text.count("{") > MAX_DEPTH and deeper_than(value, MAX_DEPTH)
    ):
        return parse(data, what)
    return value


def _too_deep(what: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is nested deeper than {MAX_DEPTH} levels")


def parse_object(data: bytes | str, what: str = "request body") -> dict[str, Any]:
    """`parse`, and the result must be a JSON object."""
    body = parse(data, what)
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return body


def check_lowercase_keys(body: dict[str, Any], what: str = "request body") -> None:
    """Refuse top-level keys a node would match to a field case-insensitively.

    Every field of Ollama's request types is lowercase; `"MODEL"` alone would
    still reach `model` on the node while the router reads it as an unknown
    key. With this check, router and node see the same top-level fields.
    """
    keys = "\0".join(body)
    if keys.isascii() and keys == keys.lower():
        return
    for key in body:
        folded = fold(key)
        if folded != key:
            raise InvalidRequest(
                f"{what}: field '{_short(key)}' must be spelled '{_short(folded)}' "
                "(field names are lowercase)",
                param=_short(key),
            )


# -- naming the offending field (runs only when a body is refused) -----------


class _Mark:
    """Stands in for the refused value (or object) in the slow pass."""

    def __init__(self, problem: str, key: str | None = None):
        self.problem = problem
        self.key = key


def _marking_object(pairs: list[tuple[str, Any]]) -> Any:
    seen: dict[str, str] = {}
    for key, _ in pairs:
        folded = fold(key)
        if folded in seen:
            first = seen[folded]
            if first == key:
                return _Mark("appears more than once", key)
            return _Mark(
                f"repeats '{_short(first)}' (keys are matched without regard "
                "to case: send each field once)",
                key,
            )
        seen[folded] = key
    return dict(pairs)


def _marking_number(text: str) -> Any:
    if abs(float(text)) == _INF:
        return _Mark(f"is out of range ({_short(text)}): numbers must be finite")
    return float(text) if any(c in text for c in ".eE") else int(text)


def _marking_constant(name: str) -> Any:
    return _Mark(f"is {name}: numbers must be finite")


def _explain(text: str) -> tuple[str, str] | None:
    """(path of the refused field, what is wrong with it); None when the body
    is (also) nested too deeply to walk."""
    slow = json.JSONDecoder(
        object_pairs_hook=_marking_object,
        parse_constant=_marking_constant,
        parse_float=_marking_number,
        parse_int=_marking_number,
    )
    try:
        tree = slow.decode(text)
    except RecursionError:
        return None
    if isinstance(tree, dict | list) and deeper_than(tree, MAX_DEPTH):
        return None
    found = _find(tree, "")
    if found is None:  # pragma: no cover - the fast pass refused for a reason
        return "", "was refused"
    path, mark = found
    if mark.key is not None:
        path = _join(path, mark.key)
    return path, mark.problem


def _find(value: Any, path: str) -> tuple[str, _Mark] | None:
    if isinstance(value, _Mark):
        return path, value
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find(item, _join(path, key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _join(path: str, key: str) -> str:
    key = _short(key)
    return f"{path}.{key}" if path else key


def _short(text: str, limit: int = 64) -> str:
    """A key or literal as shown in an error: bounded, control characters escaped."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text
