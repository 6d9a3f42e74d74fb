"""nodejson.node_object: a node's JSON object, no laxer than json.loads."""

from __future__ import annotations

import json

import pytest

from herd.router.routing.nodejson import node_object


@pytest.mark.parametrize(
    "data",
    [
        b'{"done":true,"eval_count":7}',
        b' \t{"a": [1, 2.5, null, "\\u00e9"]}\r\n',
        b'{"message":{"content":"caf\xc3\xa9"}}\n',
        b"{}",
    ],
)
def test_reads_what_json_loads_reads(data: bytes) -> None:
    assert node_object(data) == json.loads(data)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not JSON"),
        (b"   ", "not JSON"),
        (b"<html>", "not JSON"),
        (b'{"a":1', "Expecting"),
        (b'{"a":1} {"b":2}', "more than one"),
        (b'{"a":1}x', "more than one"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"\xff{}", "utf-8"),
        (b'{"a":"\xed\xa0\x80"}', "utf-8"),  # an encoded lone surrogate
        (b"\xef\xbb\xbf{}", "not JSON"),  # a byte order mark
        (b'{"a":1}\x0b', "more than one"),  # white space to str, not to JSON
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_refuses_anything_but_one_utf8_object(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        node_object(data)
