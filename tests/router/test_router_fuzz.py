"""Property: whatever JSON lands in a field the router reads, the answer is a 2xx
or a 4xx in the route's error shape (never a 500), and the node only ever
receives JSON that Go's decoder accepts.

Every field the /v1 converters and the native routes read gets random JSON
values (any type, nested, NaN and Infinity included), on every route, through
the real app and upstream client to a recording node on loopback.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.router.recnode import RecordingNode, app_over, go_view

LOCAL = {"remote_addr": "127.0.0.1"}

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and ±Infinity included: sent as literals
    | st.text(max_size=12)
    | st.sampled_from(["auto", "none", "text", "low", "user", "function", "{}"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "f", "arguments": '{"a": 1}'},
}
CHAT = {
    "model": "llama3.2:3b",
    "messages": [
        {"role": "system", "content": "be brief", "name": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AA=="},
                },
            ],
        },
        {"role": "assistant", "content": "", "tool_calls": [CALL], "reasoning": "r"},
        {"role": "tool", "tool_call_id": "call_1", "name": "f", "content": "42"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": "f", "description": "d", "parameters": {}},
        }
    ],
    "tool_choice": "auto",
    "response_format": {"type": "json_schema", "json_schema": {"schema": {}}},
    "stream": False,
    "stream_options": {"include_usage": True},
    "temperature": 0.5,
    "top_p": 0.9,
    "seed": 1,
    "stop": ["x"],
    "max_tokens": 5,
    "max_completion_tokens": 5,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "n": 1,
    "logprobs": True,
    "top_logprobs": 2,
    "reasoning_effort": "low",
    "reasoning": {"effort": "low"},
    "parallel_tool_calls": True,
    "modalities": ["text"],
    "user": "u",
    "fallback_models": ["qwen3:0.6b"],
}
COMPLETION = {
    "model": "llama3.2:3b",
    "prompt": "hi",
    "suffix": "s",
    "max_tokens": 5,
    "temperature": 0.5,
    "top_p": 0.9,
    "seed": 1,
    "stop": "x",
    "stream": False,
    "stream_options": {"include_usage": True},
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logprobs": 2,
    "echo": False,
    "n": 1,
    "best_of": 1,
    "logit_bias": {},
    "fallback_models": ["qwen3:0.6b"],
}
EMBEDDING = {
    "model": "nomic-embed-text",
    "input": ["a", "b"],
    "dimensions": 2,
    "encoding_format": "float",
    "fallback_models": [],
}
NATIVE = {
    "model": "llama3.2:3b",
    "stream": False,
    "keep_alive": "5m",
    "options": {"temperature": 0.5},
    "format": "json",
    "think": False,
    "fallback_models": ["qwen3:0.6b"],
}


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into `doc` (each field, element and nested field)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _paths(value, (*prefix, index))
    return out


#: (route, base body, the paths fuzzed)
CASES = [
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", COMPLETION),
    ("/v1/embeddings", EMBEDDING),
    ("/api/chat", {**NATIVE, "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/generate", {**NATIVE, "prompt": "hi", "name": "llama3.2:3b"}),
    ("/api/embed", {**NATIVE, "input": "hi"}),
    ("/api/embeddings", {**NATIVE, "prompt": "hi"}),
    ("/api/show", {"model": "llama3.2:3b", "name": "x", "fallback_models": []}),
]
TARGETS = [(route, base, path) for route, base in CASES for path in _paths(base)]


@pytest.fixture(scope="module")
def node():
    rec = RecordingNode()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def client(node):
    return app_over(node)


def _set(doc: Any, path: tuple, value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


def _check(client, node, route: str, body: Any) -> None:
    text = json.dumps(body, allow_nan=True)
    node.take()
    reply = client.simulate_post(route, body=text.encode(), **LOCAL)
    status = reply.status_code
    assert status < 500, (route, text, reply.text)
    if status >= 400:
        error = json.loads(reply.content)["error"]
        if route.startswith("/v1/"):
            assert set(error) == {"message", "type", "param", "code"}, reply.text
        else:
            assert isinstance(error, str), reply.text
    for _, raw in node.take():
        go_view(raw)  # raises unless Go's decoder would accept the bytes


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(target=st.sampled_from(TARGETS), value=JSON_VALUES)
def test_any_value_in_any_read_field(client, node, target, value):
    route, base, path = target
    body = copy.deepcopy(base)
    if path[0] == "reasoning":
        body.pop("reasoning_effort")  # so the router reads reasoning.effort
    _set(body, path, value)
    _check(client, node, route, body)


@settings(max_examples=150, deadline=None)
@given(
    route=st.sampled_from([route for route, _ in CASES]),
    body=JSON_VALUES,
    extra=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
)
def test_any_body_on_any_route(client, node, route, body, extra):
    if isinstance(body, dict):
        body = {**body, **extra}
    _check(client, node, route, body)
