"""End to end: the official `ollama` and `openai` clients against `herd serve`.

One router (real gunicorn, gevent worker) in front of two `herd sim` nodes, on
loopback, shared by the module. Client groups are told apart by source
address (127.0.0.1 plain, .3 needs a token, .4 rate-limited and limited to one
model, anything else refused).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import httpx
import ollama
import openai
import pytest

from tests.router.routerproc import TOKEN, TOKEN_SHA, manifest, start_router, start_sim

pytestmark = pytest.mark.e2e

PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLIENTS = [
    {"name": "local", "networks": ["127.0.0.1/32", "::1/128"], "operator": True},
    {"name": "tokened", "networks": ["127.0.0.3/32"], "token_sha256": TOKEN_SHA},
    {
        "name": "limited",
        "networks": ["127.0.0.4/32"],
        "models": ["fast"],
        "rate_limit": {"requests_per_minute": 1, "burst": 2},
    },
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clients")
    nodes = [start_sim("node-a"), start_sim("node-b")]
    text = manifest(nodes, clients=CLIENTS)
    router = start_router(tmp / "state", text, tmp / "router.log")
    try:
        router.wait_nodes_up(2)
        yield router, nodes
    finally:
        router.stop()
        for node in nodes:
            node.kill()


def from_address(address: str) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(local_address=address)


@pytest.fixture(scope="module")
def oc(fleet):
    client = ollama.Client(host=fleet[0].url)
    yield client
    client._client.close()  # idle keep-alive connections delay a graceful stop


@pytest.fixture(scope="module")
def ai(fleet):
    client = openai.OpenAI(
        base_url=fleet[0].url + "/v1", api_key="unused", max_retries=0
    )
    yield client
    client.close()


# -- Ollama API --------------------------------------------------------------


def test_ollama_chat_and_stream(oc):
    reply = oc.chat("fast", messages=[{"role": "user", "content": "hello"}])
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.eval_count > 0
    chunks = list(
        oc.chat(
            "llama3.2:3b", messages=[{"role": "user", "content": "hello"}], stream=True
        )
    )
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    streamed = "".join(c.message.content for c in chunks)
    assert streamed == reply.message.content  # deterministic node, same answer


def test_ollama_generate_embed_list_ps_show(oc):
    gen = oc.generate("fast", prompt="say something")
    assert gen.response and gen.done
    parts = list(oc.generate("fast", prompt="say something", stream=True))
    assert "".join(p.response for p in parts) == gen.response
    one = oc.embed("nomic-embed-text", input="a sentence")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) > 10
    batch = oc.embed("nomic-embed-text", input=["one", "two", "three"])
    assert len(batch.embeddings) == 3
    legacy = oc.embeddings("nomic-embed-text", prompt="a sentence")
    assert len(legacy.embedding) > 10
    names = {m.model for m in oc.list().models}
    assert {"llama3.2:3b", "fast:latest", "nomic-embed-text:latest"} <= names
    loaded = []
    for _ in range(40):  # /api/ps reflects the nodes' last health poll (~1 s)
        loaded = oc.ps().models
        if loaded:
            break
        time.sleep(0.1)
    assert loaded and all(m.model in names for m in loaded)
    shown = oc.show("fast")
    assert shown.modelinfo is not None and shown.details.family


def test_ollama_vision_tools_format_think(oc):
    seen = oc.chat(
        "llava:7b",
        messages=[{"role": "user", "content": "what is this?", "images": [PNG]}],
    )
    assert seen.message.content
    tooled = oc.chat(
        "fast",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER],
    )
    assert tooled.message.tool_calls
    assert tooled.message.tool_calls[0].function.name == "get_weather"
    as_json = oc.chat(
        "fast", messages=[{"role": "user", "content": "json please"}], format="json"
    )
    json.loads(as_json.message.content)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    shaped = oc.generate("fast", prompt="a city", format=schema)
    assert isinstance(json.loads(shaped.response), dict)
    thought = oc.chat(
        "qwen3:0.6b", messages=[{"role": "user", "content": "think"}], think=True
    )
    assert thought.message.thinking


def test_ollama_errors(oc, fleet):
    with pytest.raises(ollama.ResponseError) as info:
        oc.chat("not-declared", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    assert info.value.error == "model 'not-declared' not found"
    status, body = fleet[0].get("/api/pull")
    assert status in (403, 405)


def test_routing_headers_and_curl_style_raw_http(fleet):
    router, nodes = fleet
    req = urllib.request.Request(
        router.url + "/api/chat",
        data=json.dumps(
            {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
        ).encode(),
    )
    req.add_header("X-Herd-Explain", "1")
    with urllib.request.urlopen(req, timeout=10) as reply:
        assert reply.headers["X-Herd-Node"] in {n.name for n in nodes}
        decision = reply.headers["X-Herd-Decision"]
        assert decision.startswith("llama3.2:3b: ") and "node-a=" in decision
        assert reply.headers["X-Herd-Model"] == "llama3.2:3b"
        float(reply.headers["X-Herd-Queue-Ms"])
        assert reply.headers["Content-Type"] == "application/x-ndjson"
        lines = reply.read().split(b"\n")
    assert lines[-1] == b""  # ends with a newline
    objects = [json.loads(line) for line in lines[:-1]]  # no blank lines
    assert objects[-1]["done"] is True


# -- OpenAI API --------------------------------------------------------------


def test_openai_chat(ai):
    done = ai.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "hello"}],
        temperature=0.2,
        top_p=0.9,
        seed=7,
        stop=["zzz"],
        max_tokens=50,
    )
    assert done.choices[0].message.content
    assert done.choices[0].finish_reason in ("stop", "length")
    assert (
        done.usage.total_tokens
        == done.usage.prompt_tokens + done.usage.completion_tokens
    )
    assert done.model == "fast"


def test_openai_chat_stream_with_usage(ai):
    chunks = list(
        ai.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    ids = {c.id for c in chunks}
    assert len(ids) == 1  # one stable id per completion
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].choices == []
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_openai_completions_embeddings_models(ai):
    comp = ai.completions.create(model="fast", prompt="once upon a time")
    assert comp.choices[0].text
    streamed = list(ai.completions.create(model="fast", prompt="once", stream=True))
    assert streamed and streamed[-1].choices[0].finish_reason == "stop"
    emb = ai.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert [d.index for d in emb.data] == [0, 1] and emb.usage.prompt_tokens >= 0
    ids = {m.id for m in ai.models.list().data}
    assert {"llama3.2:3b", "fast:latest", "llava:7b"} <= ids
    assert ai.models.retrieve("fast").id == "fast"
    with pytest.raises(openai.NotFoundError) as info:
        ai.models.retrieve("gpt-17")
    assert info.value.body["code"] == "model_not_found"


def test_openai_vision_tools_response_format(ai):
    seen = ai.chat.completions.create(
        model="llava:7b",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + PNG},
                    },
                ],
            }
        ],
    )
    assert seen.choices[0].message.content
    tooled = ai.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER],
    )
    assert tooled.choices[0].finish_reason == "tool_calls"
    call = tooled.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)
    schema = {
        "name": "city",
        "schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    shaped = ai.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "a city"}],
        response_format={"type": "json_schema", "json_schema": schema},
    )
    assert isinstance(json.loads(shaped.choices[0].message.content), dict)


def test_openai_errors_are_openai_shaped(ai):
    with pytest.raises(openai.NotFoundError) as info:
        ai.chat.completions.create(
            model="not-declared", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad:
        ai.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"made_up_field": 1},
        )
    assert "made_up_field" in bad.value.body["message"]


# -- enforcement ---------------------------------------------------------------


def test_unknown_address_is_refused(fleet):
    router = fleet[0]
    denied = ollama.Client(host=router.url, transport=from_address("127.0.0.9"))
    with pytest.raises(ollama.ResponseError) as info:
        denied.chat("fast", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 403
    ai = openai.OpenAI(
        base_url=router.url + "/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx.Client(transport=from_address("127.0.0.9")),
    )
    with pytest.raises(openai.PermissionDeniedError) as denied_ai:
        ai.models.list()
    assert denied_ai.value.body["type"] == "permission_error"


def test_token_group(fleet):
    router = fleet[0]
    anonymous = ollama.Client(host=router.url, transport=from_address("127.0.0.3"))
    with pytest.raises(ollama.ResponseError) as info:
        anonymous.list()
    assert info.value.status_code == 401
    wrong = ollama.Client(
        host=router.url,
        transport=from_address("127.0.0.3"),
        headers={"Authorization": "Bearer nope"},
    )
    with pytest.raises(ollama.ResponseError):
        wrong.list()
    ai = openai.OpenAI(
        base_url=router.url + "/v1",
        api_key=TOKEN,
        max_retries=0,
        http_client=httpx.Client(transport=from_address("127.0.0.3")),
    )
    assert (
        ai.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}]
        )
        .choices[0]
        .message.content
    )


def test_model_allowlist_and_rate_limit(fleet):
    router = fleet[0]
    limited = ollama.Client(host=router.url, transport=from_address("127.0.0.4"))
    assert {m.model for m in limited.list().models} == {"llama3.2:3b", "fast:latest"}
    with pytest.raises(ollama.ResponseError) as info:
        limited.embed("nomic-embed-text", input="x")
    assert info.value.status_code == 403
    statuses = []
    for _ in range(4):
        try:
            limited.chat("fast", messages=[{"role": "user", "content": "x"}])
            statuses.append(200)
        except ollama.ResponseError as ex:
            statuses.append(ex.status_code)
    assert statuses.count(429) >= 1 and statuses[0] == 200
    with httpx.Client(transport=from_address("127.0.0.4")) as raw:
        reply = raw.post(
            router.url + "/v1/chat/completions",
            json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
        )
    assert reply.status_code == 429
    assert int(reply.headers["Retry-After"]) >= 1
    assert reply.json()["error"]["type"] == "rate_limit_error"


def test_body_too_large(fleet):
    router = fleet[0]
    big = "x" * (1024 * 1024 + 10)
    reply = httpx.post(
        router.url + "/api/chat",
        json={"model": "fast", "messages": [{"role": "user", "content": big}]},
    )
    assert reply.status_code == 413 and "limit" in reply.json()["error"]
    reply = httpx.post(
        router.url + "/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": big}]},
    )
    assert reply.status_code == 413
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_fleet_endpoints(fleet):
    router, nodes = fleet
    status, body = router.get("/fleet/status")
    assert status == 200 and body["nodes_up"] == 2
    assert {n["name"] for n in body["nodes"]} == {n.name for n in nodes}
    assert any(m["name"] == "llama3.2:3b" for m in body["models"])
    status, body = router.get("/fleet/nodes")
    assert status == 200 and all(n["state"] == "up" for n in body["nodes"])
    status, body = router.get("/readyz")
    assert status == 200 and body["ready"]
    with urllib.request.urlopen(router.url + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert 'herd_node_up{node="node-a"} 1.0' in text


def test_fleet_endpoints_for_a_group_that_is_not_operator(fleet):
    """Over real gunicorn: the token group (not an operator) sees its models,
    no node names, URLs or addresses, and no per-node metrics or decisions."""
    from herd.router.report import render

    router, nodes = fleet
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(
        transport=from_address("127.0.0.3"), headers=auth, timeout=30
    ) as client:
        reply = client.get(router.url + "/fleet/status")
        assert reply.status_code == 200
        body = reply.json()
        assert body["operator"] is False and body["client"] == "tokened"
        assert body["nodes_up"] == 2 and "nodes" not in body
        assert {m["name"] for m in body["models"]} >= {"llama3.2:3b"}
        for node in nodes:
            assert node.url not in reply.text and node.name not in reply.text
            assert node.url.rsplit(":", 1)[1] not in reply.text
        assert "tokened" in render(body) and "llama3.2:3b" in render(body)
        assert client.get(router.url + "/fleet/nodes").status_code == 403
        assert client.get(router.url + "/metrics").status_code == 403
        ready = client.get(router.url + "/readyz")
        assert ready.status_code == 200 and ready.json()["nodes_up"] == 2
        assert not any(node.name in ready.text for node in nodes)
        chat = client.post(
            router.url + "/api/chat",
            json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
            headers={"X-Herd-Explain": "1"},
        )
        assert chat.status_code == 200
        assert "X-Herd-Decision" not in chat.headers
