"""Reading one JSON object a node sent: its whole answer, or one NDJSON line.

Every answer the router folds, relays or converts is parsed here once. The
standard library's C scanner does the work; the wrapper `json.loads` puts
around it (guessing UTF-16 or -32 from the first bytes, decoding with
`surrogatepass`, two regular-expression passes for white space, and three
Python calls) cost as much again as the scan of a small answer, on every
request. Stricter than `json.loads`, never laxer: the bytes must be UTF-8
(as Ollama and every OpenAI-compatible server send), with only JSON white
space around one object.
"""

from __future__ import annotations

import json
from typing import Any

#: The C scanner json.loads uses (its memo is cleared after every call).
_scan = json.JSONDecoder().scan_once
#: JSON's white space (RFC 8259: not every character str.isspace() knows),
#: the json module's own pattern.
_white = json.decoder.WHITESPACE.match


def node_object(data: bytes) -> dict[str, Any]:
    """`data` as one JSON object; ValueError when it is anything else
    (not UTF-8, not JSON, not an object, more after it, nested too deeply)."""
    text = data.decode("utf-8")
    start = 0 if text[:1] == "{" else _white(text).end()  # type: ignore[union-attr]
    try:
        obj, end = _scan(text, start)
    except StopIteration as ex:
        raise ValueError("not JSON") from ex
    except RecursionError as ex:  # nested absurdly deep
        raise ValueError("nested too deeply") from ex
    size = len(text)
    if end != size and _white(text, end).end() != size:  # type: ignore[union-attr]
        raise ValueError("more than one JSON value")
    if obj.__class__ is not dict:
        raise ValueError("not a JSON object")
    return obj
