"""OpenAI ⇄ Ollama conversion (herd.router.convert): table-driven, pure, no I/O.

The last test drives the official `openai` client through a tiny WSGI app that
uses only convert + a real `herd sim` node upstream.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest

from herd.errors import InvalidRequest
from herd.router import convert

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> convert.Converted:
    return convert.chat_request({"model": "m", "messages": USER, **fields})


# ---------------------------------------------------------------- chat requests


@pytest.mark.parametrize(
    ("fields", "native_part"),
    [
        ({}, {"stream": False, "options": {"temperature": 1.0, "top_p": 1.0}}),
        (
            {"temperature": 0.2, "top_p": 0.5},
            {"options": {"temperature": 0.2, "top_p": 0.5}},
        ),
        ({"max_tokens": 7}, {"options": {"num_predict": 7}}),
        (
            {"max_completion_tokens": 9, "max_tokens": 7},
            {"options": {"num_predict": 9}},
        ),
        ({"seed": 42}, {"options": {"seed": 42}}),
        ({"stop": "END"}, {"options": {"stop": ["END"]}}),
        ({"stop": ["a", "b"]}, {"options": {"stop": ["a", "b"]}}),
        (
            {"frequency_penalty": 0.5, "presence_penalty": -0.5},
            {"options": {"frequency_penalty": 0.5, "presence_penalty": -0.5}},
        ),
        ({"response_format": {"type": "json_object"}}, {"format": "json"}),
        ({"response_format": {"type": "text"}}, {}),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                }
            },
            {"format": {"type": "object"}},
        ),
        ({"reasoning_effort": "none"}, {"think": False}),
        ({"reasoning_effort": "minimal"}, {"think": "low"}),
        ({"reasoning_effort": "high"}, {"think": "high"}),
        ({"reasoning_effort": "xhigh"}, {"think": "max"}),
        ({"reasoning": {"effort": "medium"}}, {"think": "medium"}),
        ({"logprobs": True, "top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}),
        ({"stream": True}, {"stream": True}),
        (
            {
                "tool_choice": "none",
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            {},
        ),
        ({"user": "alice", "metadata": {"k": "v"}, "store": False, "n": 1}, {}),
    ],
)
def test_chat_request_carries_fields(fields: dict, native_part: dict) -> None:
    native = chat(**fields).native
    assert native["model"] == "m" and native["messages"] == USER
    for key, value in native_part.items():
        if key == "options":
            assert value.items() <= native["options"].items()
        else:
            assert native[key] == value
    if "tool_choice" in fields:
        assert "tools" not in native
    if "response_format" not in fields:
        assert "format" not in native


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"n": 2}, "'n'"),
        ({"logit_bias": {"50256": -100}}, "'logit_bias'"),
        ({"tool_choice": "required"}, "'tool_choice'"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "f"}}},
            "'tool_choice.function.name'",
        ),
        ({"tool_choice": {"type": "allowed_tools"}}, "'tool_choice'"),
        ({"parallel_tool_calls": "no"}, "'parallel_tool_calls'"),
        ({"audio": {"voice": "x"}}, "'audio'"),
        ({"modalities": ["text", "audio"]}, "'modalities'"),
        ({"prediction": {"type": "content"}}, "'prediction'"),
        ({"functions": []}, "'functions'"),
        ({"web_search_options": {}}, "'web_search_options'"),
        ({"reasoning_effort": "extreme"}, "'reasoning_effort'"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "json_schema.schema"),
        ({"top_logprobs": 3}, "'top_logprobs'"),
        ({"logprobs": True, "top_logprobs": 21}, "'top_logprobs'"),
        ({"temperature": "hot"}, "'temperature'"),
        ({"stream": "yes"}, "'stream'"),
        ({"stop": [1]}, "'stop'"),
        ({"stream_options": {"bogus": True}}, "'stream_options.bogus'"),
        ({"messages": []}, "'messages'"),
        ({"model": ""}, "'model'"),
        ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0]"),
    ],
)
def test_chat_request_rejects_what_cannot_be_honoured(fields: dict, named: str) -> None:
    with pytest.raises(InvalidRequest) as ex:
        convert.chat_request({"model": "m", "messages": USER, **fields})
    assert named in ex.value.message and ex.value.status == 400


def test_chat_request_body_must_be_an_object() -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        convert.chat_request(["not", "an", "object"])


def test_chat_messages_images_tools_and_roles() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is"},
                {"type": "text", "text": "this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:image/png;base64,{PNG}"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "reasoning": "hmm",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city":"Paris"}',
                    },
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
        {"role": "USER", "content": [{"type": "text", "text": "thanks"}]},
    ]
    native = convert.chat_request({"model": "m", "messages": messages}).native
    assert native["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is\nthis?", "images": [PNG]},
        {
            "role": "assistant",
            "content": "",
            "thinking": "hmm",
            "tool_calls": [
                {
                    "id": "call_1",
                    "function": {
                        "index": 0,
                        "name": "get_weather",
                        "arguments": {"city": "Paris"},
                    },
                }
            ],
        },
        {
            "role": "tool",
            "content": "21 C",
            "tool_name": "get_weather",
            "tool_call_id": "call_1",
        },
        {"role": "user", "content": "thanks"},
    ]


def test_tools_are_carried_without_openai_only_keys() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "description": "d",
            "strict": True,
            "parameters": {"type": "object", "properties": {}},
        },
    }
    native = chat(tools=[tool], tool_choice="auto").native
    assert native["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ({"role": "wizard", "content": "x"}, "messages[0].role"),
        ({"role": "user", "content": 5}, "messages[0].content"),
        ({"role": "user", "content": [{"type": "input_audio"}]}, "part type"),
        (
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.png"},
                    }
                ],
            },
            "remote URLs",
        ),
        (
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,@@@"},
                    }
                ],
            },
            "not valid base64",
        ),
        (
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "f", "arguments": "{oops"},
                    }
                ],
            },
            "invalid tool call arguments",
        ),
        ({"role": "assistant", "tool_calls": [{"function": {}}]}, "function.name"),
        ({"role": "user", "content": "x", "audio": {}}, "'messages[0].audio'"),
    ],
)
def test_bad_messages_are_named(message: dict, named: str) -> None:
    with pytest.raises(InvalidRequest) as ex:
        convert.chat_request({"model": "m", "messages": [message]})
    assert named in ex.value.message


def test_stream_flags() -> None:
    c = chat(stream=True, stream_options={"include_usage": True})
    assert c.stream and c.include_usage and c.native["stream"] is True
    assert c.model == "m"


# ---------------------------------------------------------------- completions


def test_completion_request() -> None:
    c = convert.completion_request(
        {
            "model": "coder",
            "prompt": "def f(",
            "suffix": "return x",
            "max_tokens": 5,
            "top_p": 0,
            "logprobs": 2,
            "stream": True,
            "echo": False,
        }
    )
    assert c.native == {
        "model": "coder",
        "prompt": "def f(",
        "stream": True,
        "suffix": "return x",
        "options": {"temperature": 1.0, "top_p": 1.0, "num_predict": 5},
        "logprobs": True,
        "top_logprobs": 2,
    }
    assert (
        convert.completion_request({"model": "m", "prompt": ["x"]}).native["prompt"]
        == "x"
    )


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"echo": True}, "'echo'"),
        ({"best_of": 3}, "'best_of'"),
        ({"n": 2}, "'n'"),
        ({"prompt": ["a", "b"]}, "'prompt'"),
        ({"prompt": [1, 2, 3]}, "'prompt'"),
        ({"logprobs": 50}, "'logprobs'"),
        ({"messages": []}, "'messages'"),
    ],
)
def test_completion_request_rejections(fields: dict, named: str) -> None:
    with pytest.raises(InvalidRequest) as ex:
        convert.completion_request({"model": "m", "prompt": "x", **fields})
    assert named in ex.value.message


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize(
    ("fields", "native", "encoding"),
    [
        ({"input": "a"}, {"input": ["a"]}, "float"),
        ({"input": ""}, {"input": [""]}, "float"),
        (
            {"input": ["a", "b"], "dimensions": 8},
            {"input": ["a", "b"], "dimensions": 8},
            "float",
        ),
        ({"input": "a", "encoding_format": "BASE64"}, {"input": ["a"]}, "base64"),
    ],
)
def test_embedding_request(fields: dict, native: dict, encoding: str) -> None:
    c = convert.embedding_request({"model": "e", **fields})
    assert c.native == {"model": "e", **native} and c.encoding_format == encoding


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"input": []}, "'input'"),
        ({"input": None}, "'input'"),
        ({"input": [[1, 2]]}, "token arrays"),
        ({"input": "a", "encoding_format": "int8"}, "'encoding_format'"),
        ({"input": "a", "dimensions": 0}, "'dimensions'"),
        ({"input": "a", "truncate": True}, "'truncate'"),
    ],
)
def test_embedding_request_rejections(fields: dict, named: str) -> None:
    with pytest.raises(InvalidRequest) as ex:
        convert.embedding_request({"model": "e", **fields})
    assert named in ex.value.message


def test_embedding_response_float_and_base64() -> None:
    native = {
        "model": "e",
        "embeddings": [[0.5, -0.25], [1.0, 0.0]],
        "prompt_eval_count": 4,
    }
    floats = convert.embedding_response(native, "alias")
    assert floats == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [0.5, -0.25], "index": 0},
            {"object": "embedding", "embedding": [1.0, 0.0], "index": 1},
        ],
        "model": "alias",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    packed = convert.embedding_response(native, "alias", "base64")["data"][0]
    raw = base64.b64decode(packed["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -0.25)


# ---------------------------------------------------------------- responses

FINAL = {
    "model": "node-name",
    "created_at": "2025-10-26T17:15:24.097767123Z",
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 11,
    "eval_count": 18,
}


def test_chat_response_shape() -> None:
    native = {
        **FINAL,
        "message": {
            "role": "assistant",
            "content": "Hello",
            "thinking": "let me think",
        },
    }
    out = convert.chat_response(native, "my-alias", id="chatcmpl-1")
    assert out == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1761498924,
        "model": "my-alias",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "reasoning": "let me think",
                    "reasoning_content": "let me think",
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 18, "total_tokens": 29},
    }


@pytest.mark.parametrize(
    ("done_reason", "tool_calls", "finish"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("stop", True, "tool_calls"),
        ("", False, None),
        ("length", True, "length"),
    ],
)
def test_finish_reason_mapping(done_reason: str, tool_calls: bool, finish: Any) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    if tool_calls:
        message["tool_calls"] = [{"function": {"name": "f", "arguments": {}}}]
    native = {**FINAL, "done_reason": done_reason, "message": message}
    assert convert.chat_response(native, "m")["choices"][0]["finish_reason"] == finish


def test_tool_calls_out_have_string_arguments_and_ids() -> None:
    native = {
        **FINAL,
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_ab12cd34",
                    "function": {
                        "index": 0,
                        "name": "f",
                        "arguments": {"a": 1, "b": "é"},
                    },
                },
                {"function": {"index": 1, "name": "g", "arguments": {}}},
            ],
        },
    }
    calls = convert.chat_response(native, "m")["choices"][0]["message"]["tool_calls"]
    assert calls[0] == {
        "id": "call_ab12cd34",
        "index": 0,
        "type": "function",
        "function": {"name": "f", "arguments": '{"a":1,"b":"é"}'},
    }
    assert (
        calls[1]["id"].startswith("call_") and calls[1]["function"]["arguments"] == "{}"
    )


def test_completion_response_and_logprobs() -> None:
    lp = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    out = convert.completion_response({**FINAL, "response": "Hi", "logprobs": lp}, "m")
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert out["choices"] == [
        {"text": "Hi", "index": 0, "logprobs": {"content": lp}, "finish_reason": "stop"}
    ]


def events(data: bytes) -> list[Any]:
    """Parse SSE bytes strictly: `data: ...` lines each followed by a blank line."""
    assert data.endswith(b"\n\n")
    out = []
    for block in data.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: ") and b"\n" not in block
        payload = block[len(b"data: ") :]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


def chunk(content: str = "", done: bool = False, **extra: Any) -> dict[str, Any]:
    msg = {"role": "assistant", "content": content, **extra}
    base = FINAL if done else {"model": "n", "created_at": FINAL["created_at"]}
    return {**base, "message": msg, "done": done}


def test_chat_stream_with_usage() -> None:
    s = convert.ChatStream("alias", include_usage=True, id="chatcmpl-x", now=1000)
    out = s.feed(chunk(thinking="hmm")) + s.feed(chunk("Hel")) + s.feed(chunk("lo"))
    assert not s.done
    out += s.feed(chunk(done=True))
    assert s.done and s.feed(chunk("late")) == b""
    evs = events(out)
    assert evs[-1] == "[DONE]"
    objs = evs[:-1]
    assert {o["id"] for o in objs} == {"chatcmpl-x"}
    assert {o["created"] for o in objs} == {1000}
    assert {o["model"] for o in objs} == {"alias"}
    assert all(o["object"] == "chat.completion.chunk" for o in objs)
    assert all(o["system_fingerprint"] == "fp_ollama" for o in objs)
    deltas = [o["choices"][0]["delta"] for o in objs[:-1]]
    assert deltas[0] == {
        "role": "assistant",
        "content": "",
        "reasoning": "hmm",
        "reasoning_content": "hmm",
    }
    assert deltas[1:] == [{"content": "Hel"}, {"content": "lo"}, {}]
    assert [o["choices"][0]["finish_reason"] for o in objs[:-1]] == [None] * 3 + [
        "stop"
    ]
    assert all("usage" not in o for o in objs[:-1])
    assert objs[-1]["choices"] == [] and objs[-1]["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 18,
        "total_tokens": 29,
    }


def test_chat_stream_tool_calls_and_no_usage() -> None:
    s = convert.ChatStream("m")
    call = {
        "id": "call_1",
        "function": {"index": 0, "name": "f", "arguments": {"x": 1}},
    }
    evs = events(s.feed(chunk(tool_calls=[call])) + s.feed(chunk(done=True)))
    delta = evs[0]["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["tool_calls"] == [
        {
            "id": "call_1",
            "index": 0,
            "type": "function",
            "function": {"name": "f", "arguments": '{"x":1}'},
        }
    ]
    assert evs[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert evs[2] == "[DONE]" and len(evs) == 3


def test_chat_stream_empty_reply_still_sends_role_then_finish() -> None:
    s = convert.ChatStream("m")
    evs = events(s.feed(chunk(done=True)))
    assert evs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert evs[1]["choices"][0]["finish_reason"] == "stop" and evs[2] == "[DONE]"


def test_stream_errors_end_with_an_error_event_then_done() -> None:
    s = convert.ChatStream("m")
    s.feed(chunk("partial"))
    evs = events(s.feed({"error": "model runner crashed"}))
    assert evs == [
        {
            "error": {
                "message": "model runner crashed",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
        "[DONE]",
    ]
    assert s.done and s.fail("again") == b""
    broken = convert.CompletionStream("m")
    assert events(broken.fail("node went away"))[0]["error"]["message"] == (
        "node went away"
    )


def test_completion_stream() -> None:
    s = convert.CompletionStream("m", include_usage=True, id="cmpl-1", now=5)
    tokens = [
        {"model": "n", "created_at": "x", "response": t, "done": False}
        for t in ("a", "", "b")
    ]
    out = b"".join(s.feed(t) for t in tokens) + s.feed({**FINAL, "response": ""})
    evs = events(out)
    texts = [
        (e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in evs[:-2]
    ]
    assert texts == [("a", None), ("b", None), ("", "stop")]
    assert evs[-2]["choices"] == [] and evs[-2]["usage"]["total_tokens"] == 29
    assert evs[-1] == "[DONE]" and {e["object"] for e in evs[:-1]} == {
        "text_completion"
    }


def test_models_and_errors() -> None:
    listed = convert.models_list([("llama3.2:3b", 10), ("team/coder:7b", 20)])
    assert listed == {
        "object": "list",
        "data": [
            {
                "id": "llama3.2:3b",
                "object": "model",
                "created": 10,
                "owned_by": "library",
            },
            {
                "id": "team/coder:7b",
                "object": "model",
                "created": 20,
                "owned_by": "team",
            },
        ],
    }
    assert convert.models_list([]) == {"object": "list", "data": []}
    assert convert.error_from_native(404, b'{"error":"model \'x\' not found"}') == {
        "error": {
            "message": "model 'x' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    assert convert.error_from_native(400, b"{}")["error"]["type"] == (
        "invalid_request_error"
    )
    garbage = convert.error_from_native(502, b"<html>bad gateway</html>")
    assert garbage["error"] == {
        "message": "<html>bad gateway</html>",
        "type": "api_error",
        "param": None,
        "code": None,
    }


def test_ids_are_unique_per_completion() -> None:
    ids = {convert.ChatStream("m").id for _ in range(200)}
    assert len(ids) == 200 and all(i.startswith("chatcmpl-") for i in ids)


# ------------------------------------------- official openai client, end to end


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _v1_app(upstream: str):
    """A minimal /v1 front over one node, built from convert only (no router)."""

    def app(environ: dict, start_response: Any) -> Iterator[bytes]:
        path = environ["PATH_INFO"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        routes = {
            "/v1/chat/completions": (
                convert.chat_request,
                "/api/chat",
                convert.chat_response,
                convert.ChatStream,
            ),
            "/v1/completions": (
                convert.completion_request,
                "/api/generate",
                convert.completion_response,
                convert.CompletionStream,
            ),
            "/v1/embeddings": (convert.embedding_request, "/api/embed", None, None),
        }
        to_native, native_path, reply, stream_type = routes[path]
        try:
            c = to_native(body)
        except InvalidRequest as ex:
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [json.dumps(convert.error_body(ex.message, ex.kind)).encode()]
        node = httpx.post(upstream + native_path, json=c.native, timeout=10)
        if node.status_code != 200:
            start_response(
                f"{node.status_code} Error", [("Content-Type", "application/json")]
            )
            return [
                json.dumps(
                    convert.error_from_native(node.status_code, node.content)
                ).encode()
            ]
        if c.stream:
            s = stream_type(c.model, c.include_usage)
            start_response("200 OK", [("Content-Type", convert.SSE_CONTENT_TYPE)])
            return [
                b"".join(s.feed(json.loads(line)) for line in node.content.splitlines())
            ]
        start_response("200 OK", [("Content-Type", "application/json")])
        if reply is None:
            out = convert.embedding_response(node.json(), c.model, c.encoding_format)
        else:
            out = reply(node.json(), c.model)
        return [json.dumps(out).encode()]

    return app


@pytest.fixture(scope="module")
def v1() -> Iterator[str]:
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "herd",
            "sim",
            "--port",
            "0",
            "--tps",
            "0",
            "--models",
            "llama3.2:3b,nomic-embed-text",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        upstream = sim.stdout.readline().split(" on ")[1].split()[0]
        server = make_server("127.0.0.1", 0, _v1_app(upstream), handler_class=_Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_port}/v1"
        server.shutdown()
    finally:
        sim.terminate()
        sim.wait(timeout=10)


def test_official_openai_client(v1: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=v1, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}]
    )
    text = reply.choices[0].message.content
    assert text and reply.model == "llama3.2:3b" and reply.usage.total_tokens > 0
    parts = list(
        client.chat.completions.create(
            model="llama3.2:3b",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == text
    assert parts[-1].usage.completion_tokens > 0
    assert len({p.id for p in parts}) == 1
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    called = client.chat.completions.create(
        model="llama3.2:3b",
        tools=[tool],
        messages=[{"role": "user", "content": "weather in Oslo?"}],
    )
    assert called.choices[0].finish_reason == "tool_calls"
    args = called.choices[0].message.tool_calls[0].function.arguments
    assert json.loads(args) == {"city": "Oslo"}
    chunks = list(
        client.chat.completions.create(
            model="llama3.2:3b",
            tools=[tool],
            stream=True,
            messages=[{"role": "user", "content": "weather in Oslo?"}],
        )
    )
    streamed = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    (call,) = [tc for tcs in streamed if tcs for tc in tcs]
    assert call.function.name == "get_weather" and call.index == 0 and call.id
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    done = client.completions.create(model="llama3.2:3b", prompt="Once", max_tokens=3)
    assert done.choices[0].finish_reason == "length"
    vectors = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(
            model="llama3.2:3b", n=2, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
