"""The client's body passed on to a node without re-encoding it
(herd.router.routing.forward._streaming): a non-streaming chat is sent to the
node as a stream (folded back by the router), `"stream": false` turned into
true in the client's own bytes, or None when that cannot be done safely.
The body is JSON the router parsed, with `stream` false."""

from __future__ import annotations

import json

import pytest

from herd.router.routing.forward import _streaming


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m","stream": false,"messages":[]}',
        b'{"model":"m","stream":false}',
        b'{"stream" :\t false, "model": "m"}',
        b'{"model": "m", "stream":\n false}',
    ],
)
def test_stream_false_becomes_true_in_place(raw):
    sent = _streaming(raw)
    assert sent is not None
    assert json.loads(sent) == {**json.loads(raw), "stream": True}
    assert (
        sent.replace(b'"stream":true', b"")
        == raw[: raw.find(b'"stream"')] + (raw[raw.find(b"false") + 5 :])
    )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m"}',  # no "stream" at all
        b'{"stream":false,"options":{"stream":false}}',  # twice
        b'{"str\\u0065am":true,"stream":false}',  # a key spelled with escapes
        b'{"stream":"false"}',  # not the literal false
    ],
)
def test_anything_else_is_re_encoded(raw):
    assert _streaming(raw) is None
