"""Bad request bodies get a 400 naming the field, in the route's error shape,
and nothing reaches the node: deep nesting, mistyped fields the /v1 converters
read, non-finite numbers, duplicate keys, encodings a node would read otherwise.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herd.errors import InvalidRequest
from herd.router.api import body
from tests.router.recnode import RecordingNode, app_over, go_view

LOCAL = {"remote_addr": "127.0.0.1"}
HI = [{"role": "user", "content": "hi"}]

#: Route -> a valid body for it.
VALID = {
    "/api/chat": {"model": "llama3.2:3b", "messages": HI, "stream": False},
    "/api/generate": {"model": "llama3.2:3b", "prompt": "hi", "stream": False},
    "/api/embed": {"model": "nomic-embed-text", "input": "hi"},
    "/api/embeddings": {"model": "nomic-embed-text", "prompt": "hi"},
    "/api/show": {"model": "llama3.2:3b"},
    "/v1/chat/completions": {"model": "llama3.2:3b", "messages": HI},
    "/v1/completions": {"model": "llama3.2:3b", "prompt": "hi"},
    "/v1/embeddings": {"model": "nomic-embed-text", "input": "hi"},
}


@pytest.fixture(scope="module")
def node():
    rec = RecordingNode()
    yield rec
    rec.stop()


@pytest.fixture
def client(node):
    node.take()
    return app_over(node)


def _post(client, path: str, text: str | bytes):
    data = text.encode() if isinstance(text, str) else text
    return client.simulate_post(path, body=data, **LOCAL)


def _refused(reply, path: str, param: str | None) -> str:
    """The error message of a 400 in the route's shape; checks `param` on /v1."""
    assert reply.status_code == 400, reply.text
    if path.startswith("/v1/"):
        error = reply.json["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        return error["message"]
    assert set(reply.json) == {"error"} and isinstance(reply.json["error"], str)
    return reply.json["error"]


def _with(path: str, **fields) -> str:
    return json.dumps({**VALID[path], **fields})


@pytest.mark.parametrize("path", sorted(VALID))
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_nesting_is_refused_on_every_route(client, node, path, opener):
    closer = "]" if opener == "[" else "}"
    deep = opener * 1000 + "1" + closer * 1000
    text = _with(path)[:-1] + f',"x":{deep}}}'
    message = _refused(_post(client, path, text), path, None)
    assert "nested deeper than 100" in message
    assert node.take() == []


def test_nesting_limit_is_exact_and_ignores_brackets_in_strings(client, node):
    ok = "[" * 99 + "]" * 99
    reply = _post(client, "/api/chat", _with("/api/chat")[:-1] + f',"x":{ok}}}')
    assert reply.status_code == 200 and node.take() != []
    brackets = "[{" * 5000  # in a string: not nesting
    reply = _post(client, "/api/generate", _with("/api/generate", prompt=brackets))
    assert reply.status_code == 200 and node.take() != []
    deep = "[" * 100 + "]" * 100  # 101 levels with the body itself
    reply = _post(client, "/api/chat", _with("/api/chat")[:-1] + f',"x":{deep}}}')
    assert reply.status_code == 400 and node.take() == []


def test_deep_tool_call_arguments_are_refused(client, node):
    deep = "[" * 1000 + "]" * 1000
    call = {"id": "c1", "type": "function", "function": {"name": "f"}}
    call["function"]["arguments"] = '{"a":' + deep + "}"
    messages = [*HI, {"role": "assistant", "content": "", "tool_calls": [call]}]
    reply = _post(
        client, "/v1/chat/completions", _with("/v1/chat/completions", messages=messages)
    )
    param = "messages[1].tool_calls[0].function.arguments"
    assert "nested deeper" in _refused(reply, "/v1/chat/completions", param)
    call["function"]["arguments"] = '{"a":1,"a":2}'
    reply = _post(
        client, "/v1/chat/completions", _with("/v1/chat/completions", messages=messages)
    )
    _refused(reply, "/v1/chat/completions", param + ".a")
    assert node.take() == []


def _tool_messages(call_id=None, tool_call_id=None):
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    if call_id is not None:
        call["id"] = call_id
    answer = {"role": "tool", "tool_call_id": "c1", "content": "42"}
    if tool_call_id is not None:
        answer["tool_call_id"] = tool_call_id
    return [*HI, {"role": "assistant", "content": "", "tool_calls": [call]}, answer]


#: (fields, param) on /v1/chat/completions: each gave a 500 before.
MISTYPED_CHAT = [
    ({"reasoning_effort": ["low"]}, "reasoning_effort"),
    ({"reasoning_effort": {"x": 1}}, "reasoning_effort"),
    ({"reasoning_effort": 3}, "reasoning_effort"),
    ({"reasoning": {"effort": ["low"]}}, "reasoning.effort"),
    ({"messages": _tool_messages(tool_call_id=["a"])}, "messages[2].tool_call_id"),
    ({"messages": _tool_messages(tool_call_id={"a": 1})}, "messages[2].tool_call_id"),
    ({"messages": _tool_messages(call_id=["a"])}, "messages[1].tool_calls[0].id"),
    ({"messages": _tool_messages(call_id={"a": 1})}, "messages[1].tool_calls[0].id"),
    (
        {"response_format": {"type": "json_schema", "json_schema": "s"}},
        "response_format.json_schema",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": ["s"]}},
        "response_format.json_schema",
    ),
    ({"response_format": {"type": ["text"]}}, "response_format.type"),
    ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": [1]}]}]},
        "messages[0].content[0].text",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": [1]}]}
            ]
        },
        "messages[0].content[0].image_url",
    ),
    (
        {"messages": [{"role": "assistant", "content": "", "reasoning": ["x"]}]},
        "messages[0].reasoning",
    ),
    (
        {"messages": [{"role": "tool", "content": "x", "name": ["f"]}]},
        "messages[0].name",
    ),
    (
        {"messages": [{"role": "user", "content": "x", "tool_calls": "no"}]},
        "messages[0].tool_calls",
    ),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
        "tools[0].function.parameters",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "description": 1}}]},
        "tools[0].function.description",
    ),
]


@pytest.mark.parametrize(("fields", "param"), MISTYPED_CHAT)
def test_mistyped_chat_fields_are_named(client, node, fields, param):
    reply = _post(
        client, "/v1/chat/completions", _with("/v1/chat/completions", **fields)
    )
    assert param in _refused(reply, "/v1/chat/completions", param)
    assert node.take() == []


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/embeddings", {"encoding_format": ["float"]}, "encoding_format"),
        ("/v1/completions", {"echo": "yes"}, "echo"),
        (
            "/v1/completions",
            {"stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
        ),
        ("/api/chat", {"stream": "no"}, "stream"),
        ("/api/chat", {"model": 3}, "model"),
        ("/api/chat", {"name": 1}, "name"),
        ("/api/generate", {"model": ["llama3.2:3b"]}, "model"),
        ("/api/show", {"name": {"a": 1}}, "name"),
    ],
)
def test_mistyped_fields_other_routes(client, node, path, fields, param):
    assert f"'{param}'" in _refused(
        _post(client, path, _with(path, **fields)), path, param
    )
    assert node.take() == []


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400]


@pytest.mark.parametrize("number", NON_FINITE)
def test_non_finite_numbers_are_refused(client, node, number):
    text = _with("/v1/chat/completions")[:-1] + f',"temperature":{number}}}'
    message = _refused(
        _post(client, "/v1/chat/completions", text),
        "/v1/chat/completions",
        "temperature",
    )
    assert "'temperature'" in message and "finite" in message
    for path in ("/api/chat", "/api/generate", "/api/embed"):
        text = _with(path)[:-1] + f',"options":{{"temperature":{number}}}}}'
        message = _refused(_post(client, path, text), path, None)
        assert "'options.temperature'" in message
    assert node.take() == []


def test_finite_numbers_still_pass(client, node):
    for number in ("1e308", "-0.0", "1e-999", "12345678901234567890"):
        text = _with("/api/chat")[:-1] + f',"options":{{"seed":{number}}}}}'
        assert _post(client, "/api/chat", text).status_code == 200
    for _, raw in node.take():
        go_view(raw)  # valid for Go's decoder


def test_duplicate_keys_are_refused_naming_them(client, node):
    text = '{"model":"llama3.2:3b","prompt":"x","options":{"seed":1,"SEED":2}}'
    message = _refused(_post(client, "/api/generate", text), "/api/generate", None)
    assert "'options.SEED'" in message and "'seed'" in message
    text = '{"model":"m","messages":[{"role":"user","content":"x","content":"y"}]}'
    reply = _post(client, "/v1/chat/completions", text)
    assert "appears more than once" in _refused(
        reply, "/v1/chat/completions", "messages[0].content"
    )
    assert node.take() == []


def test_bodies_a_node_would_read_otherwise_are_refused(client, node):
    valid = _with("/api/generate")
    for data in (
        valid.encode("utf-16"),
        b"\xef\xbb\xbf" + valid.encode(),
        valid.encode()[:-2] + b'\xff"}',
        valid + valid,
    ):
        assert _post(client, "/api/generate", data).status_code == 400
    assert node.take() == []


def test_lone_surrogates_never_give_a_500(client, node):
    reply = _post(client, "/api/chat", '{"model":"\\ud800","messages":[]}')
    # A model name that is not text is refused before any lookup.
    assert reply.status_code == 400 and "\ufffd" not in reply.text
    reply = _post(
        client,
        "/v1/chat/completions",
        '{"model":"\\udfff","messages":[{"role":"user","content":"x"}]}',
    )
    assert reply.status_code == 400
    text = '{"model":"llama3.2:3b","input":"a\\ud800b"}'
    assert _post(client, "/v1/embeddings", text).status_code == 200
    [(_, raw)] = node.take()
    assert go_view(raw)["input"] == ["a\ud800b"]  # sent escaped, as the client did


def _true_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_true_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_true_depth(v) for v in value), default=0)
    return 0


_TEXT = st.text(alphabet=st.sampled_from('ab"\\[]{}:,\n\u00e9\U0001f600'), max_size=8)
_DOCS = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(doc=_DOCS, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_parse_agrees_with_json(doc, ascii_only, indent):
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=indent)
    assert body.parse(text.encode()) == doc  # no upper case: keys never collide


@settings(max_examples=200, deadline=None)
@given(
    levels=st.lists(
        st.sampled_from(["[", '{"k":', '[1,{"a":"[{","b":', '{"]":']),
        min_size=1,
        max_size=1500,
    ),
    filler=_TEXT,
)
def test_nesting_beyond_the_limit_is_refused_exactly(levels, filler):
    closing = {"[": "]", '{"k":': "}", '[1,{"a":"[{","b":': "}]", '{"]":': "}"}
    text = (
        "".join(levels)
        + json.dumps(filler)
        + "".join(closing[o] for o in reversed(levels))
    )
    nested = sum(2 if o.startswith("[1") else 1 for o in levels)
    if nested <= body.MAX_DEPTH:
        assert _true_depth(body.parse(text)) == nested
    else:
        with pytest.raises(InvalidRequest, match="nested deeper than 100"):
            body.parse(text)


def test_a_node_answer_nested_absurdly_deep_is_a_502(client, node):
    deep = b"[" * 5000 + b"]" * 5000
    try:
        node.canned = b'{"done":true,"x":' + deep + b"}\n"
        for path in ("/api/chat", "/v1/chat/completions", "/api/embed"):
            reply = _post(client, path, _with(path))
            assert reply.status_code == 502, (path, reply.text)
        first = b'{"message":{"role":"assistant","content":"a"},"done":false}\n'
        node.canned = first + b'{"done":false,"x":' + deep + b"}\n"
        reply = _post(client, "/api/chat", _with("/api/chat", stream=True))
        assert reply.status_code == 200
        assert "not JSON" in reply.text.splitlines()[-1]
    finally:
        node.canned = None


def test_keep_alive_null_does_not_unpin_a_pinned_model(node):
    client = app_over(node, pinned=("llama3.2:3b",))
    node.take()
    for keep in ("null", '"5m"'):
        text = f'{{"model":"llama3.2:3b","prompt":"x","keep_alive":{keep}}}'
        assert _post(client, "/api/generate", text).status_code == 200
    [(_, null), (_, five)] = node.take()
    assert go_view(null)["keep_alive"] == -1  # the manifest's pin
    assert go_view(five)["keep_alive"] == "5m"  # the client's own, as before


@pytest.mark.parametrize("before", ["", " ", "\r\n\t "])
@pytest.mark.parametrize("after", ["", " ", "\n", " x", "{}", "\t]"])
@pytest.mark.parametrize("doc", ['{"a": [1]}', "[]", '"s"', "7"])
def test_white_space_around_a_body_as_json_reads_it(before, after, doc):
    # The parser skips white space itself only where the body does not start
    # with a bracket: every case must still read (or refuse) as json does.
    text = before + doc + after
    try:
        expected = json.loads(text)
    except ValueError as ex:
        with pytest.raises(InvalidRequest) as refused:
            body.parse(text.encode())
        assert str(ex) in str(refused.value)
    else:
        assert body.parse(text.encode()) == expected
