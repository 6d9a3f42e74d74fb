"""Ollama -> OpenAI conversion for OpenAI-compatible nodes (pure, in-process)."""

from __future__ import annotations

import json

import pytest

from herd.errors import InvalidRequest
from herd.router.convert import to_openai
from herd.router.http import multipart as mp


def test_chat_request_carries_images_tools_format_and_options() -> None:
    body = {
        "model": "qwen",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is it", "images": ["/9j/AAAA"]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "look", "arguments": {"x": 1}}}],
            },
            {"role": "tool", "content": "a cat", "tool_name": "look"},
        ],
        "format": {"type": "object"},
        "options": {"num_predict": 5, "temperature": 0, "num_ctx": 8192},
        "think": "high",
        "keep_alive": "5m",
    }
    out = to_openai.request("/api/chat", body, "Qwen/Qwen3-8B")
    assert out.path == "/v1/chat/completions"
    sent = out.body
    assert sent["model"] == "Qwen/Qwen3-8B" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    image = sent["messages"][1]["content"][1]["image_url"]["url"]
    assert image == "data:image/jpeg;base64,/9j/AAAA"
    call = sent["messages"][2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"x": 1}
    assert sent["messages"][3]["tool_call_id"] == call["id"]
    assert sent["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert sent["max_tokens"] == 5 and sent["temperature"] == 0
    assert "num_ctx" not in json.dumps(sent) and sent["reasoning_effort"] == "high"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/chat", {"messages": [], "options": {"mirostat": 2}}, "options.mirostat"),
        ("/api/generate", {"prompt": "x", "suffix": "y"}, "suffix"),
        ("/api/generate", {"prompt": "x", "context": [1, 2]}, "context"),
        ("/api/chat", {"messages": [{"role": "user", "x": 1}]}, "messages[0].x"),
        ("/api/embed", {"input": 3}, "input"),
    ],
)
def test_what_cannot_be_carried_is_named(path: str, body: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_openai.request(path, {"model": "m", **body}, "m")
    assert info.value.param == field


def test_sse_stream_becomes_ndjson_with_whole_tool_calls() -> None:
    events = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"reasoning_content": "hmm"}}]},
        {"choices": [{"delta": {"content": "Hi"}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c1", "function": {"name": "get"}}
                        ]
                    }
                }
            ]
        },
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]
                    }
                }
            ]
        },
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]
                    }
                }
            ]
        },
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4}},
    ]
    conv = to_openai.SseToNdjson("/api/chat", "qwen")
    lines = []
    for event in events:
        lines += conv.feed(b"data: " + json.dumps(event).encode() + b"\n")
        lines += conv.feed(b"\n")
    lines += conv.feed(b"data: [DONE]\n")
    frames = [json.loads(line) for line in lines]
    assert [f["message"].get("thinking") for f in frames[:1]] == ["hmm"]
    assert frames[1]["message"]["content"] == "Hi"
    call = frames[2]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get" and call["function"]["arguments"] == {
        "a": 1
    }
    final = frames[3]
    assert final["done"] and final["done_reason"] == "stop"
    assert (final["prompt_eval_count"], final["eval_count"]) == (7, 4)
    assert conv.done and conv.end() == []


def test_reply_and_error_shapes() -> None:
    answer = {
        "choices": [{"message": {"content": "ok"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    }
    native = to_openai.reply("/api/generate", answer, "m")
    assert native["response"] == "ok" and native["done_reason"] == "length"
    vectors = {
        "data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]
    }
    assert to_openai.reply("/api/embed", vectors, "m")["embeddings"] == [[1.0], [2.0]]
    assert to_openai.reply("/api/embeddings", vectors, "m") == {"embedding": [1.0]}
    assert to_openai.error_message(b'{"error":{"message":"no such model"}}') == (
        "no such model"
    )
    assert to_openai.error_message(b'{"detail":"Not Found"}') == "Not Found"


def test_multipart_boundary_checks() -> None:
    assert mp.boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    for bad in (None, "text/plain", "multipart/form-data", "multipart/form-data; b=1"):
        with pytest.raises(mp.MultipartError):
            mp.boundary_of(bad)
    with pytest.raises(mp.MultipartError):
        mp.boundary_of("multipart/form-data; boundary=" + "x" * 71)
