"""End to end: the Responses API, forced tool choice and thinking models.

One router (real gunicorn, gevent worker) in front of one `herd sim` node,
shared by the module, driven by the official `openai` and `ollama` clients and
LangChain's ChatOpenAI, as users call them.
"""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest
from pydantic import BaseModel

from tests.router.routerproc import manifest, start_router, start_sim

pytestmark = pytest.mark.e2e

MODELS = "llama3.2:3b,qwen3:0.6b,qwen3:1.7b"
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "current weather",
        "parameters": WEATHER_PARAMS,
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "local time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
RESPONSES_WEATHER = {"type": "function", "name": "get_weather", **WEATHER["function"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compat")
    node = start_sim("node-a", models=MODELS)
    models = [
        {"name": "llama3.2:3b", "place": {"nodes": ["node-a"]}},
        # Thinking detected from the node's capabilities; default budget.
        {"name": "qwen3:0.6b", "place": {"nodes": ["node-a"]}},
        # Declared, but the cap is left as the client sent it.
        {
            "name": "qwen3:1.7b",
            "place": {"nodes": ["node-a"]},
            "thinking": {"budget_tokens": 64, "inflate": False},
        },
    ]
    router = start_router(
        tmp / "state", manifest([node], models=models), tmp / "router.log"
    )
    router.wait_nodes_up(1)
    router.node = node
    yield router
    router.stop()
    node.kill()


@pytest.fixture(scope="module")
def oai(fleet):
    return openai.OpenAI(base_url=fleet.url + "/v1", api_key="unused", max_retries=0)


# ---------------------------------------------------------------- Responses


def test_responses_create_answers_text_and_usage(oai):
    resp = oai.responses.create(
        model="llama3.2:3b", instructions="Be brief.", input="Say hello."
    )
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.status == "completed" and resp.model == "llama3.2:3b"
    assert resp.output[0].type == "message" and resp.output_text.strip()
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.store is False and resp.instructions == "Be brief."


def test_responses_stream_sends_typed_events_in_order(oai):
    events = list(
        oai.responses.create(model="llama3.2:3b", input="Tell me a story.", stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text == events[-4].text
    assert final.status == "completed" and final.usage.output_tokens > 0


def test_responses_tools_round_trip(oai):
    first = oai.responses.create(
        model="llama3.2:3b",
        input="What's the weather in Paris?",
        tools=[RESPONSES_WEATHER],
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {
        "city": "Paris"
    }
    assert call.call_id.startswith("call_")
    second = oai.responses.create(
        model="llama3.2:3b",
        tools=[RESPONSES_WEATHER],
        input=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
        ],
    )
    assert second.output_text.strip()
    assert not [i for i in second.output if i.type == "function_call"]


def test_responses_stream_with_tool_call_events(oai):
    events = list(
        oai.responses.create(
            model="llama3.2:3b",
            input="What's the weather in Oslo?",
            tools=[RESPONSES_WEATHER],
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Oslo"}
    final = events[-1].response
    assert final.output[-1].type == "function_call"
    assert final.output[-1].name == "get_weather"


def test_responses_stream_cut_by_the_node_ends_with_response_failed(fleet, oai):
    fleet.node.fault("cut-mid-stream", after_chunks=3, times=1, paths=["/api/chat"])
    events = list(
        oai.responses.create(model="llama3.2:3b", input="A long story.", stream=True)
    )
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert "failed mid-stream" in events[-2].message
    assert events[-1].response.status == "failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


class Weather(BaseModel):
    city: str
    temperature: int
    sunny: bool


def test_responses_json_schema_output_parses(oai):
    parsed = oai.responses.parse(
        model="llama3.2:3b", input="Weather in Rome as JSON.", text_format=Weather
    )
    assert isinstance(parsed.output_parsed, Weather)
    raw = oai.responses.create(
        model="llama3.2:3b",
        input="Give me JSON.",
        text={"format": {"type": "json_object"}},
    )
    assert isinstance(json.loads(raw.output_text), dict)


def test_responses_thinking_model_returns_reasoning_items(oai):
    resp = oai.responses.create(
        model="qwen3:0.6b", input="Why is the sky blue?", reasoning={"effort": "low"}
    )
    kinds = [item.type for item in resp.output]
    assert kinds == ["reasoning", "message"]
    assert resp.output[0].content[0].type == "reasoning_text"
    assert resp.output[0].content[0].text.strip()
    # Thinking and answer both count as output; the thinking part is its share.
    usage = resp.usage
    assert 0 < usage.output_tokens_details.reasoning_tokens < usage.output_tokens
    events = list(oai.responses.create(model="qwen3:0.6b", input="Why?", stream=True))
    kinds = [e.type for e in events]
    assert "response.reasoning_text.delta" in kinds
    assert kinds.index("response.reasoning_text.done") < kinds.index(
        "response.output_text.delta"
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"tools": [{"type": "file_search", "vector_store_ids": ["x"]}]},
            "tools[0].type",
        ),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        (
            {"input": [{"type": "item_reference", "id": "msg_1"}]},
            "input[0].type",
        ),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_responses_refuses_what_it_cannot_carry(oai, fields, param):
    body = {"model": "llama3.2:3b", "input": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as ex:
        oai.post("/responses", cast_to=object, body=body)
    error = ex.value.body
    assert ex.value.status_code == 400 and error["param"] == param
    assert (
        error["type"] == "invalid_request_error"
        and param.split("[")[0] in error["message"]
    )


# ---------------------------------------------------------------- tool choice


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_choice_gets_exactly_that_call(oai, stream):
    # The prompt mentions neither tool: without the emulation the model would
    # answer in text.
    args = {
        "model": "llama3.2:3b",
        "messages": [{"role": "user", "content": "Hello there."}],
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "parallel_tool_calls": False,
    }
    if stream:
        chunks = list(oai.chat.completions.create(stream=True, **args))
        calls = [
            c
            for ch in chunks
            for c in (ch.choices and ch.choices[0].delta.tool_calls or [])
        ]
        reason = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
        content = "".join(
            ch.choices[0].delta.content or "" for ch in chunks if ch.choices
        )
    else:
        reply = oai.chat.completions.create(**args)
        calls = reply.choices[0].message.tool_calls
        reason = reply.choices[0].finish_reason
        content = reply.choices[0].message.content
    assert len(calls) == 1 and calls[0].function.name == "get_time"
    assert set(json.loads(calls[0].function.arguments)) == {"zone"}
    assert reason == "tool_calls" and not content


def test_required_tool_choice_calls_one_of_the_tools(oai):
    reply = oai.chat.completions.create(
        model="llama3.2:3b",
        messages=[{"role": "user", "content": "Good morning."}],
        tools=[WEATHER, TIME],
        tool_choice="required",
    )
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "get_time")


def test_forced_tool_choice_on_responses(oai):
    resp = oai.responses.create(
        model="llama3.2:3b",
        input="Hello.",
        tools=[RESPONSES_WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert [i.type for i in resp.output] == ["function_call"]
    assert resp.output[0].name == "get_weather"


def test_tool_choice_naming_an_unknown_tool_is_a_400(oai):
    with pytest.raises(openai.BadRequestError) as ex:
        oai.chat.completions.create(
            model="llama3.2:3b",
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "launch"}},
        )
    assert ex.value.body["param"] == "tool_choice.function.name"


# ---------------------------------------------------------------- thinking


def test_small_cap_on_a_thinking_model_still_gets_an_answer(fleet):
    client = ollama.Client(host=fleet.url, timeout=30)
    reply = client.chat(
        model="qwen3:0.6b",
        messages=[{"role": "user", "content": "What is two plus two?"}],
        think=True,
        options={"num_predict": 4},
    )
    assert reply.message.thinking and reply.message.content.strip()
    raw = httpx.post(
        fleet.url + "/api/chat",
        json={
            "model": "qwen3:0.6b",
            "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": 4},
            "stream": False,
        },
        timeout=30,
    )
    assert (
        raw.headers["X-Herd-Thinking-Budget"] == "requested=4; sent=1028; budget=1024"
    )


def test_without_inflation_an_empty_answer_says_length(fleet, oai):
    client = ollama.Client(host=fleet.url, timeout=30)
    reply = client.chat(
        model="qwen3:1.7b",
        messages=[{"role": "user", "content": "What is two plus two?"}],
        options={"num_predict": 4},
    )
    assert reply.message.thinking and reply.message.content == ""
    assert reply.done_reason == "length"
    resp = oai.responses.create(model="qwen3:1.7b", input="Hi", max_output_tokens=4)
    assert resp.status == "incomplete"
    assert resp.incomplete_details.reason == "max_output_tokens"


def test_openai_thinking_maps_to_reasoning_content(oai, fleet):
    reply = oai.chat.completions.with_raw_response.create(
        model="qwen3:0.6b",
        messages=[{"role": "user", "content": "Think first."}],
        max_tokens=5,
        reasoning_effort="low",
    )
    assert reply.headers["x-herd-thinking-budget"].startswith("requested=5;")
    message = reply.parse().choices[0].message
    assert message.content.strip() and message.model_extra["reasoning_content"]
    off = oai.chat.completions.with_raw_response.create(
        model="qwen3:0.6b",
        messages=[{"role": "user", "content": "No thinking."}],
        max_tokens=5,
        reasoning_effort="none",
    )
    assert "x-herd-thinking-budget" not in off.headers
    assert "reasoning_content" not in (off.parse().choices[0].message.model_extra or {})


# ---------------------------------------------------------------- LangChain


def test_langchain_structured_output_with_function_calling(fleet):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="llama3.2:3b", base_url=fleet.url + "/v1", api_key="unused", max_retries=0
    )
    result = llm.with_structured_output(Weather, method="function_calling").invoke(
        "What is the weather like?"
    )
    assert isinstance(result, Weather)


def test_langchain_responses_api(fleet):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="llama3.2:3b",
        base_url=fleet.url + "/v1",
        api_key="unused",
        max_retries=0,
        use_responses_api=True,
    )
    answer = llm.invoke("Say hello.")
    assert answer.text.strip()
    tooled = llm.bind_tools([WEATHER]).invoke("What's the weather in Paris?")
    assert tooled.tool_calls[0]["name"] == "get_weather"
    assert tooled.tool_calls[0]["args"] == {"city": "Paris"}
    streamed = "".join(chunk.text for chunk in llm.stream("Tell me more."))
    assert streamed.strip()
