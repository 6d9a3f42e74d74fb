"""Pure conversions for the Responses API, forced tool choice and thinking budgets."""

from __future__ import annotations

import json

import pytest

from herd.errors import InvalidRequest
from herd.manifest.model import Model, Thinking
from herd.router import convert
from herd.router.convert import thinking
from herd.router.convert.toolchoice import NotACall, ToolPlan, settle

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]
USER = [{"role": "user", "content": "hi"}]


def native_call(name: str, **args: object) -> dict:
    return {"function": {"index": 0, "name": name, "arguments": args}}


# ---------------------------------------------------------------- tool choice


def test_forced_function_offers_only_it_and_a_schema_that_calls_it():
    c = convert.chat_request(
        {
            "model": "m",
            "messages": USER,
            "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
    )
    assert [t["function"]["name"] for t in c.native["tools"]] == ["get_weather"]
    schema = c.native["format"]
    assert schema["properties"]["name"] == {"type": "string", "enum": ["get_weather"]}
    assert schema["properties"]["arguments"] == TOOLS[0]["function"]["parameters"]
    assert c.plan == ToolPlan(("get_weather",), True)


def test_required_allows_any_offered_tool():
    c = convert.chat_request(
        {"model": "m", "messages": USER, "tools": TOOLS, "tool_choice": "required"}
    )
    names = [o["properties"]["name"]["enum"][0] for o in c.native["format"]["anyOf"]]
    assert names == ["get_weather", "get_time"]
    assert c.native["format"]["anyOf"][1]["properties"]["arguments"] == {
        "type": "object"
    }


def test_forced_tool_choice_and_response_format_are_exclusive():
    with pytest.raises(InvalidRequest) as ex:
        convert.chat_request(
            {
                "model": "m",
                "messages": USER,
                "tools": TOOLS,
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            }
        )
    assert ex.value.param == "response_format"


def test_required_without_tools_is_refused():
    with pytest.raises(InvalidRequest) as ex:
        convert.chat_request(
            {"model": "m", "messages": USER, "tool_choice": "required"}
        )
    assert ex.value.param == "tool_choice"


def test_settle_turns_the_constrained_text_into_the_call():
    plan = ToolPlan(("get_weather",), True)
    text = json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})
    out = settle({"role": "assistant", "content": text}, "stop", plan)
    assert out["content"] == ""
    [call] = out["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == {"city": "Oslo"}


def test_settle_keeps_a_native_call_and_drops_calls_not_allowed():
    plan = ToolPlan(("get_time",), True)
    msg = {
        "content": "",
        "tool_calls": [native_call("get_weather", city="x"), native_call("get_time")],
    }
    out = settle(msg, "stop", plan)
    assert [c["function"]["name"] for c in out["tool_calls"]] == ["get_time"]


@pytest.mark.parametrize(
    "content",
    [
        "Sure, here is the weather.",
        json.dumps({"name": "launch", "arguments": {}}),
        json.dumps({"name": "get_weather", "arguments": "not json"}),
        "[1, 2]",
    ],
)
def test_settle_refuses_a_reply_that_is_not_the_forced_call(content):
    with pytest.raises(NotACall) as ex:
        settle({"content": content}, "stop", ToolPlan(("get_weather",), True))
    assert ex.value.status == 502 and "get_weather" in ex.value.message
    assert ex.value.code == "tool_choice_not_honoured"


def test_settle_leaves_a_reply_cut_by_the_cap_as_it_is():
    out = settle(
        {"content": '{"name": "get_w'}, "length", ToolPlan(("get_weather",), True)
    )
    assert out["content"] == '{"name": "get_w' and "tool_calls" not in out


def test_parallel_tool_calls_false_keeps_the_first_call_only():
    c = convert.chat_request(
        {"model": "m", "messages": USER, "tools": TOOLS, "parallel_tool_calls": False}
    )
    assert c.plan == ToolPlan((), True) and "format" not in c.native
    native = {
        "message": {
            "content": "",
            "tool_calls": [
                native_call("get_weather", city="a"),
                native_call("get_time"),
            ],
        },
        "done": True,
        "done_reason": "stop",
    }
    reply = convert.chat_response(native, "m", plan=c.plan)
    calls = reply["choices"][0]["message"]["tool_calls"]
    assert [t["function"]["name"] for t in calls] == ["get_weather"]
    stream = convert.ChatStream("m", request=c)
    sse = stream.feed(native).decode()
    assert sse.count('"name":') == 1 and '"finish_reason":"tool_calls"' in sse


def test_a_streamed_forced_call_that_is_not_a_call_ends_in_an_error_event():
    c = convert.chat_request(
        {"model": "m", "messages": USER, "tools": TOOLS, "tool_choice": "required"}
    )
    stream = convert.ChatStream("m", request=c)
    assert b"Hello" not in stream.feed({"message": {"content": "Hello"}, "done": False})
    tail = stream.feed({"message": {"content": " you"}, "done": True}).decode()
    assert '"error"' in tail and "tool_choice" in tail and tail.endswith("[DONE]\n\n")


# ---------------------------------------------------------------- Responses


def test_responses_input_items_become_chat_messages():
    c = convert.responses_request(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use metric units."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Weather?"},
                        {
                            "type": "input_image",
                            "image_url": "data:image/png;base64,AAAA",
                        },
                    ],
                },
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [],
                    "content": [
                        {"type": "reasoning_text", "text": "They want weather."}
                    ],
                },
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city": "Oslo"}',
                },
                {
                    "type": "function_call",
                    "call_id": "call_2",
                    "name": "get_time",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "noon"}],
                },
            ],
            "max_output_tokens": 50,
            "reasoning": {"effort": "minimal"},
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "x",
                    "schema": {"type": "object"},
                }
            },
        }
    )
    msgs = c.native["messages"]
    assert [m["role"] for m in msgs] == [
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
    ]
    assert msgs[2] == {"role": "user", "content": "Weather?", "images": ["AAAA"]}
    assistant = msgs[3]
    assert assistant["thinking"] == "They want weather."
    assert [t["function"]["name"] for t in assistant["tool_calls"]] == [
        "get_weather",
        "get_time",
    ]
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert [t["function"]["index"] for t in assistant["tool_calls"]] == [0, 1]
    assert msgs[4] == {
        "role": "tool",
        "content": "18C",
        "tool_call_id": "call_1",
        "tool_name": "get_weather",
    }
    assert msgs[5]["content"] == "noon" and msgs[5]["tool_name"] == "get_time"
    assert c.native["options"]["num_predict"] == 50
    assert c.native["think"] == "low" and c.native["format"] == {"type": "object"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": 5}, "input"),
        ({"input": [{"type": "computer_call"}]}, "input[0].type"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0].type",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_image", "image_url": "https://x/y.png"}
                        ],
                    }
                ]
            },
            "input[0].content[0].image_url",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call",
                        "call_id": "c",
                        "name": "f",
                        "arguments": "{",
                    }
                ]
            },
            "input[0].arguments",
        ),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"background": True}, "background"),
        ({"include": ["file_search_call.results"]}, "include[0]"),
        ({"reasoning": {"effort": "galaxy"}}, "reasoning.effort"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"max_output_tokens": "many"}, "max_output_tokens"),
    ],
)
def test_responses_request_refuses_with_the_field_named(fields, param):
    with pytest.raises(InvalidRequest) as ex:
        convert.responses_request({"model": "m", "input": "hi", **fields})
    assert ex.value.param == param and ex.value.status == 400


def test_responses_store_is_accepted_and_nothing_is_kept():
    c = convert.responses_request({"model": "m", "input": "hi", "store": True})
    native = {"message": {"content": "Hello"}, "done": True, "done_reason": "stop"}
    assert convert.responses_reply(native, c)["store"] is False


def test_responses_reply_estimates_reasoning_tokens_by_share():
    c = convert.responses_request({"model": "m", "input": "hi"})
    native = {
        "message": {"thinking": "t" * 300, "content": "a" * 100},
        "done": True,
        "eval_count": 40,
    }
    usage = convert.responses_reply(native, c)["usage"]
    assert usage["output_tokens"] == 40
    assert usage["output_tokens_details"]["reasoning_tokens"] == 30
    native["message"] = {"content": "no thinking"}
    usage = convert.responses_reply(native, c)["usage"]
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0


def test_responses_stream_failure_ends_with_error_and_failed():
    c = convert.responses_request({"model": "m", "input": "hi", "stream": True})
    stream = convert.ResponsesStream("m", request=c)
    first = stream.feed({"message": {"content": "Hel"}, "done": False}).decode()
    assert first.startswith("event: response.created\n")
    tail = stream.fail("node went away").decode()
    events = [
        json.loads(line[6:]) for line in tail.splitlines() if line.startswith("data: ")
    ]
    assert [e["type"] for e in events] == ["error", "response.failed"]
    assert events[1]["response"]["status"] == "failed" and stream.done
    assert events[1]["response"]["output"][0]["type"] == "message"
    assert stream.feed({"done": True}) == b""


# ---------------------------------------------------------------- thinking


@pytest.mark.parametrize(
    ("name", "thinks"),
    [
        ("qwen3:8b", True),
        ("deepseek-r1:7b", True),
        ("gpt-oss:20b", True),
        ("phi4-reasoning:14b", True),
        ("qwq:latest", True),
        ("registry.local:5000/library/qwen3:0.6b", True),
        ("qwen3-coder:30b", False),
        ("qwen3-embedding:0.6b", False),
        ("llama3.2:3b", False),
        ("phi4:14b", False),
    ],
)
def test_thinking_models_by_name(name, thinks):
    assert thinking.thinks_by_name(name) is thinks


def test_node_capabilities_override_the_name():
    assert thinking.thinks(Model("llama3.2:3b"), ["completion", "thinking"])
    assert not thinking.thinks(Model("qwen3:8b"), ["completion", "tools"])
    assert thinking.thinks(Model("llama3.2:3b", thinking=Thinking()), ["completion"])


def test_inflate_raises_a_cap_only_when_thinking_is_on():
    model = Model("qwen3:8b", thinking=Thinking(budget_tokens=100))
    native = {"options": {"num_predict": 20, "temperature": 0.1}}
    budget = thinking.inflate(native, model)
    assert budget.header() == "requested=20; sent=120; budget=100"
    assert native["options"] == {"num_predict": 120, "temperature": 0.1}
    for untouched in (
        {"options": {"num_predict": 20}, "think": False},
        {"options": {"num_predict": -1}},
        {"options": {}},
        {},
    ):
        before = json.dumps(untouched)
        assert thinking.inflate(untouched, model) is None
        assert json.dumps(untouched) == before
    off = Model("qwen3:8b", thinking=Thinking(inflate=False))
    assert thinking.inflate({"options": {"num_predict": 5}}, off) is None
    assert (
        thinking.inflate({"options": {"num_predict": 5}}, Model("llama3.2:3b")) is None
    )
