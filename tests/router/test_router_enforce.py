"""What reaches a node is what the router checked (real gunicorn router, real clients).

The node is a recording fake (tests/router/recnode.py) that reads each body as
Ollama's Go decoder does. The client group may use only llama3.2:3b; every
request below tries to make the node run something else, or read a field
other than the router read. Each is either refused with a 400 (and the node
receives nothing) or reaches the node meaning exactly what was checked.
"""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest
import yaml

from tests.router.recnode import RecordingNode, RecordingOpenAINode, go_view
from tests.router.routerproc import manifest, start_router

ALLOWED = "llama3.2:3b"

#: Route -> the rest of a valid body (JSON text, without braces).
ROUTES = {
    "/api/chat": '"messages":[{"role":"user","content":"hi"}]',
    "/api/generate": '"prompt":"hi"',
    "/api/embed": '"input":"hi"',
    "/api/embeddings": '"prompt":"hi"',
    "/api/show": '"verbose":false',
}

#: Bodies (%s is the route's rest) that try to smuggle another model or field.
ATTACKS = [
    '{"model":"llama3.2:3b",%s,"Model":"qwen3:0.6b"}',
    '{"Model":"qwen3:0.6b",%s,"model":"llama3.2:3b"}',
    '{"model":"llama3.2:3b",%s,"MODEL":"qwen3:0.6b"}',
    '{"model":"llama3.2:3b",%s,"model":"qwen3:0.6b"}',
    '{"model":"qwen3:0.6b",%s,"model":"llama3.2:3b"}',
    '{"model":"llama3.2:3b",%s,"mod\\u0065l":"qwen3:0.6b"}',
    '{"model":"llama3.2:3b",%s,"M\\u006fdel":"qwen3:0.6b"}',
    '{"name":"llama3.2:3b",%s,"Model":"qwen3:0.6b"}',
    '{"name":"llama3.2:3b",%s,"MODEL":"qwen3:0.6b","model":""}',
    '{"model":"llama3.2:3b",%s,"\\u212aeep_alive":0}',
    '{"model":"llama3.2:3b",%s,"keep_alive":"5m","KEEP_ALIVE":0}',
    '{"model":"llama3.2:3b",%s,"options":{"temperature":0.5},"options":{"seed":9}}',
    '{"model":"llama3.2:3b",%s,"Options":{"num_ctx":99}}',
    '{"model":"llama3.2:3b",%s,"opt\u0131ons":{"num_ctx":99}}',
    '{"model":"llama3.2:3b",%s,"stream":false,"Stream":true}',
    '{"model":"llama3.2:3b",%s,"\u017ftream":false}',
    '{"model":"llama3.2:3b",%s,"options":{"stream":false},"str\\u0065am":false}',
    '{"model":"llama3.2:3b",%s,"think":false,"Think":true}',
    '{"model":"llama3.2:3b",%s,"format":"json","FORMAT":{"type":"object"}}',
    '{"model":"llama3.2:3b",%s,"options":{"seed":1,"seed":2}}',
]


@pytest.fixture(scope="module")
def node():
    rec = RecordingNode()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def served(node, tmp_path_factory):
    text = manifest(
        [node],
        clients=[{"name": "local", "networks": ["127.0.0.0/8"], "models": [ALLOWED]}],
        limits={"retries": 0},
    )
    tmp = tmp_path_factory.mktemp("enforce")
    r = start_router(tmp / "state", text, tmp / "router.log")
    try:
        r.wait_nodes_up(1)
        yield r
    finally:
        r.stop()


@pytest.fixture(autouse=True)
def _fresh(node):
    node.take()


def _bodies() -> list[tuple[str, str]]:
    out = []
    for route, rest in ROUTES.items():
        for attack in ATTACKS:
            out.append((route, attack % rest))
            if route in ("/api/chat", "/api/generate"):
                out.append((route, attack % (rest + ',"stream":false')))
    return out


def test_the_node_reads_what_was_checked(served, node):
    refused = forwarded = 0
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for route, text in _bodies():
            reply = client.post(
                route,
                content=text.encode(),
                headers={"Content-Type": "application/json"},
            )
            received = node.take()
            checked = json.loads(text)  # what the router reads (Python's json)
            if reply.status_code == 400:
                refused += 1
                assert received == [], (route, text)
                assert "error" in reply.json()
                continue
            assert reply.status_code in (200, 403), (route, text, reply.text)
            for path, raw in received:
                forwarded += 1
                seen = go_view(raw)  # what the node runs
                assert path == route
                assert seen["model"] == ALLOWED, (route, text, raw)
                for field, value in seen.items():
                    if field in ("model", "name", "stream"):
                        continue
                    assert checked.get(field) == value, (route, text, field, raw)
                if checked.get("stream", True) is not False:
                    assert seen.get("stream") is not False, (route, text, raw)
    assert refused > 0


def test_plain_requests_still_reach_the_node(served, node):
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for route, rest in ROUTES.items():
            reply = client.post(route, content=f'{{"model":"{ALLOWED}",{rest}}}')
            assert reply.status_code == 200, (route, reply.text)
            [(path, raw)] = node.take()
            assert path == route and go_view(raw)["model"] == ALLOWED
    client = ollama.Client(host=served.url)
    try:
        answer = client.chat(
            model=ALLOWED, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.message.content == "ok"
        [(path, raw)] = node.take()
        assert go_view(raw)["model"] == ALLOWED
        with pytest.raises(ollama.ResponseError) as ex:
            client.chat(
                model="qwen3:0.6b", messages=[{"role": "user", "content": "hi"}]
            )
        assert ex.value.status_code == 403 and node.take() == []
    finally:
        client._client.close()  # no idle keep-alive holding the router's stop


def test_openai_client_cannot_smuggle_fields(served, node):
    with openai.OpenAI(
        base_url=served.url + "/v1", api_key="unused", max_retries=0
    ) as client:
        _smuggle_through(client, node)


def _smuggle_through(client: openai.OpenAI, node: RecordingNode) -> None:
    hi = [{"role": "user", "content": "hi"}]
    smuggled = [
        {"Model": "qwen3:0.6b"},
        {"MODEL": "qwen3:0.6b"},
        {"\u017ftream": True},
        {"Stream": True},
        {"Temperature": 2},
    ]
    for extra in smuggled:
        with pytest.raises(openai.BadRequestError) as ex:
            client.chat.completions.create(model=ALLOWED, messages=hi, extra_body=extra)
        assert ex.value.body["param"], extra
    for messages in (
        [{"role": "user", "content": "hi", "Content": "ignore that"}],
        [{"role": "user", "content": "hi", "ROLE": "system"}],
    ):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=ALLOWED, messages=messages)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="qwen3:0.6b", messages=hi)
    assert node.take() == []
    reply = client.chat.completions.create(model=ALLOWED, messages=hi)
    assert reply.choices[0].message.content == "ok"
    [(path, raw)] = node.take()
    assert path == "/api/chat" and go_view(raw)["model"] == ALLOWED


#: OpenAI routes an `api: openai` node gets as sent -> the rest of a body.
OPENAI_ROUTES = {
    "/v1/chat/completions": '"messages":[{"role":"user","content":"hi"}]',
    "/v1/completions": '"prompt":"hi"',
    "/v1/embeddings": '"input":"hi"',
}
#: A lone field spelled so that only a case-insensitive decoder reads it.
LONE_VARIANTS = ['"Stream":true', '"MAX_TOKENS":99999', '"\u017ftream":true']


def test_an_openai_node_reads_what_was_checked(tmp_path):
    """Passed through as sent, a body still means what the router read."""
    node = RecordingOpenAINode()
    doc = yaml.safe_load(
        manifest(
            [node],
            clients=[
                {"name": "local", "networks": ["127.0.0.0/8"], "models": [ALLOWED]}
            ],
            limits={"retries": 0},
        )
    )
    doc["nodes"][0]["api"] = "openai"
    text = yaml.safe_dump(doc)
    r = start_router(tmp_path / "state", text, tmp_path / "router.log")
    try:
        r.wait_nodes_up(1)
        with httpx.Client(base_url=r.url, timeout=30) as client:
            for route, rest in OPENAI_ROUTES.items():
                for lone in LONE_VARIANTS:
                    body = f'{{"model":"{ALLOWED}",{rest},{lone}}}'
                    reply = client.post(route, content=body)
                    assert reply.status_code == 400, (route, body, reply.text)
                    assert reply.json()["error"]["param"], reply.text
                    assert node.take() == [], (route, body)
                reply = client.post(route, content=f'{{"model":"{ALLOWED}",{rest}}}')
                assert reply.status_code == 200, (route, reply.text)
                [(path, raw)] = node.take()
                assert path == route and go_view(raw)["model"] == ALLOWED
    finally:
        r.stop()
        node.stop()
