"""Request-derived text made safe to log and to trace: escaped and bounded.

Model names, paths, methods, header values... come from the caller. Written
as they are, a `\\n` forges a whole access-log line, a NUL or an escape
sequence reaches terminals and log shippers, and a 900 kB model name lands in
every log line and trace row of a flood of refused requests. Every access-log
and trace writer passes such text through `logged`, which

- keeps printable ASCII except space and backslash as it is (the fast path:
  a few C-level string checks, well under a microsecond);
- writes anything else as a Python-style escape (`\\n`, `\\x00`, `\\x20`,
  `\\u202e`, `\\\\`), so a field never contains a space, a line break or a
  control character, and the escaping cannot be confused with the text;
- caps the result at `limit` characters and says how much was cut
  (`...(+899800_chars)`, still one token).
"""

from __future__ import annotations

import re

#: Longest logged or traced text field (model names are far shorter).
FIELD_MAX = 200

_SAFE = re.compile(r"[!-\[\]-~]")
#: Recently logged short texts (model names, routes, groups repeat): a dict
#: lookup instead of the checks. Bounded; only texts within FIELD_MAX.
_RECENT_MAX = 4096
_recent: dict[str, str] = {}
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def logged(value: object, limit: int = FIELD_MAX, *, spaces: bool = False) -> str:
    """`value` as one escaped token of at most about `limit` characters.

    With `spaces`, spaces are kept (free text inside a log message rather
    than a field of a space-separated line)."""
    cache = limit == FIELD_MAX and not spaces and value.__class__ is str
    if cache:
        known = _recent.get(value)  # type: ignore[call-overload]
        if known is not None:
            return known
    text = value if isinstance(value, str) else str(value)
    if (
        len(text) <= limit
        and text.isascii()
        and text.isprintable()
        and (spaces or " " not in text)
        and "\\" not in text
    ):
        if cache:
            _remember(text, text)
        return text
    out: list[str] = []
    size = 0
    used = 0
    for char in text[:limit]:
        if _SAFE.fullmatch(char) or (spaces and char == " "):
            piece = char
        else:
            piece = _escape(char)
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
        used += 1
    if used < len(text):
        out.append(f"...(+{len(text) - used}_chars)")
    result = "".join(out)
    if cache and len(text) <= limit:
        _remember(text, result)
    return result


def _remember(text: str, result: str) -> None:
    if len(_recent) >= _RECENT_MAX:
        _recent.clear()
    _recent[text] = result


def logged_or_none(value: str | None, limit: int = FIELD_MAX) -> str | None:
    """`logged(value)`, keeping None (a trace column without a value)."""
    return None if value is None else logged(value, limit)


#: Recently escaped tuples of texts (a trace row's text fields repeat as a
#: whole: same group, route, models, node, caller). Bounded like `_recent`.
_recent_tuples: dict[tuple[object, ...], tuple[str | None, ...]] = {}


def logged_all(values: tuple[object, ...]) -> tuple[str | None, ...]:
    """`logged_or_none` of each value, with one dict lookup for a tuple seen
    recently (a third of the cost of looking each text up, see `logged`).

    Only tuples of texts (or None) are remembered: an equal tuple is then the
    same texts, whereas `1`, `1.0` and `True` are equal keys that escape
    differently."""
    try:
        known = _recent_tuples.get(values)
    except TypeError:  # an unhashable value (a JSON list as a model name)
        known = None
    if known is not None:
        return known
    result = tuple(None if value is None else logged(value) for value in values)
    if all(value is None or value.__class__ is str for value in values):
        if len(_recent_tuples) >= _RECENT_MAX:
            _recent_tuples.clear()
        _recent_tuples[values] = result
    return result
