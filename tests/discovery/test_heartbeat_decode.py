"""`decode`: a heartbeat's JSON read with few Python hooks, refusing what the
router's strict body parser refuses (herd.router.api.body), with its messages."""

from __future__ import annotations

import json

import pytest

from herd.errors import InvalidRequest
from herd.router.api.heartbeat import decode
from tests.bench.bench_discovery import agent_body


@pytest.mark.parametrize("partial", [False, True])
def test_a_real_beat_reads_as_json_reads_it(partial: bool) -> None:
    data = agent_body(7, partial=partial)
    assert decode(data) == json.loads(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"metrics": {"cpu": NaN}}', "field 'metrics.cpu' is NaN"),
        ('{"metrics": {"load": [1.0, Infinity]}}', "'metrics.load[1]' is Infinity"),
        ('{"metrics": {"cpu": -Infinity}}', "is -Infinity"),
        ('{"metrics": {"total": 1e999}}', "'metrics.total' is out of range"),
        ('{"metrics": {"load": [-1.5E400]}}', "'metrics.load[0]' is out of range"),
        ('{"name": "a", "url": "x", "name": "b"}', "'name' appears more than once"),
        ('{"metrics": {"gpus": [{"i": 1, "i": 2}]}}', "'metrics.gpus[0].i' appears"),
        ("[" * 101 + "]" * 101, "nested deeper than 100 levels"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 100 levels"),
        ('{"name": "a"} {}', "not valid JSON: Extra data"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_refusals_name_the_field(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode(text.encode())
    assert message in caught.value.message
    assert caught.value.message.startswith("heartbeat")


def test_only_utf8() -> None:
    for data in ('{"name": "\u00e9"}'.encode("latin-1"), b"\xef\xbb\xbf{}"):
        with pytest.raises(InvalidRequest, match="not UTF-8|not valid JSON"):
            decode(data)
    assert decode('{"name": "\u00e9"}'.encode()) == {"name": "\u00e9"}


def test_white_space_around_and_exact_keys_are_fine() -> None:
    assert decode(b' \n{"a": [1, 2.5, {"b": null}]} \r\n') == {
        "a": [1, 2.5, {"b": None}]
    }
    # Nothing but the router reads a heartbeat: keys that differ only in case
    # are different keys (bodies forwarded to Go nodes refuse them).
    assert decode(b'{"name": "a", "Name": "b"}') == {"name": "a", "Name": "b"}
    # Integers are read exactly (and written back with the same digits).
    assert decode(b'{"n": ' + b"9" * 400 + b"}") == {"n": int("9" * 400)}
