"""`herd sim` over real HTTP: the official ollama client, raw NDJSON, fault modes."""

from __future__ import annotations

import base64
import json
import math
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import ollama
import pytest
from falcon import testing

from herd.sim import Fault, SimError, SimState, parse_keep_alive
from herd.sim import models as sm
from herd.sim.app import create_app

MODELS = "llama3.2:3b,nomic-embed-text,qwen3:0.6b,llava:7b"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "current weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}


def start_sim(*extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "herd",
            "sim",
            "--port",
            "0",
            "--models",
            MODELS,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"herd sim did not start: {line!r} {proc.stderr.read()}")
    return proc, match.group(0)


def stop_sim(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        # (A bound: on a machine this busy the sim once took >10 s to exit.)
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    """A sim node with no token delay (fast), shared by the module."""
    proc, url = start_sim("--tps", "0")
    yield url
    assert stop_sim(proc) == 0


@pytest.fixture()
def client(sim: str) -> ollama.Client:
    return ollama.Client(host=sim, timeout=10)


@pytest.fixture()
def raw(sim: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim, timeout=10) as http:
        http.post("/_sim/fault", json={"mode": "ok"})
        yield http
        http.post("/_sim/fault", json={"mode": "ok"})


def hi(text: str = "hello there") -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- ollama client


def test_list_show_ps(client: ollama.Client) -> None:
    names = [m.model for m in client.list().models]
    assert names == ["llama3.2:3b", "nomic-embed-text:latest", "qwen3:0.6b", "llava:7b"]
    entry = client.list().models[0]
    assert entry.digest and len(entry.digest) == 64 and entry.size > 0
    assert entry.details.family == "llama" and entry.details.parameter_size == "3B"
    assert entry.details.quantization_level == "Q4_K_M"
    shown = client.show("llama3.2:3b")
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.capabilities == ["completion", "tools"]
    assert shown.template and shown.parameters and shown.details.format == "gguf"
    assert client.show("nomic-embed-text").capabilities == ["embedding"]
    assert "thinking" in client.show("qwen3:0.6b").capabilities
    assert "vision" in client.show("llava:7b").capabilities
    client.chat(model="llava:7b", messages=hi(), keep_alive="10m")
    loaded = {m.model: m for m in client.ps().models}
    assert "llava:7b" in loaded and loaded["llava:7b"].size_vram > 0
    client.chat(model="llava:7b", messages=[], keep_alive=0)
    assert "llava:7b" not in {m.model for m in client.ps().models}


def test_chat_is_deterministic_and_streams_the_same_text(client: ollama.Client) -> None:
    once = client.chat(model="llama3.2:3b", messages=hi())
    again = client.chat(model="llama3.2:3b", messages=hi())
    assert once.message.content == again.message.content != ""
    assert once.message.role == "assistant" and once.done_reason == "stop"
    other = client.chat(model="llama3.2:3b", messages=hi("something else"))
    assert other.message.content != once.message.content
    chunks = list(client.chat(model="llama3.2:3b", messages=hi(), stream=True))
    assert "".join(c.message.content for c in chunks) == once.message.content
    assert [c.done for c in chunks].count(True) == 1 and chunks[-1].done
    final = chunks[-1]
    for metric in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert getattr(final, metric) > 0, metric
    assert final.eval_count == len(chunks) - 1


def test_generate(client: ollama.Client) -> None:
    whole = client.generate(model="llama3.2:3b", prompt="Why is the sky blue?")
    assert whole.response and whole.context and whole.done_reason == "stop"
    parts = list(
        client.generate(model="llama3.2:3b", prompt="Why is the sky blue?", stream=True)
    )
    assert "".join(p.response for p in parts) == whole.response
    short = client.generate(model="llama3.2:3b", prompt="x", options={"num_predict": 3})
    assert short.done_reason == "length" and short.eval_count == 3
    assert client.generate(model="llama3.2:3b", prompt="").done_reason == "load"
    with pytest.raises(ollama.ResponseError, match="does not support generate"):
        client.generate(model="nomic-embed-text", prompt="x")


def test_format_json_and_schema(client: ollama.Client) -> None:
    reply = client.chat(model="llama3.2:3b", messages=hi(), format="json")
    assert isinstance(json.loads(reply.message.content), dict)
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "age", "tags", "ok"],
    }
    value = json.loads(
        client.generate(model="llama3.2:3b", prompt="who?", format=schema).response
    )
    assert isinstance(value["name"], str) and isinstance(value["age"], int)
    assert isinstance(value["tags"], list) and value["ok"] is True
    streamed = client.chat(
        model="llama3.2:3b", messages=hi(), format=schema, stream=True
    )
    assert set(json.loads("".join(c.message.content for c in streamed))) == set(
        schema["required"]
    )


def test_thinking(client: ollama.Client) -> None:
    reply = client.chat(model="qwen3:0.6b", messages=hi())  # think defaults on
    assert reply.message.thinking and reply.message.content
    assert not client.chat(
        model="qwen3:0.6b", messages=hi(), think=False
    ).message.thinking
    gen = client.generate(model="qwen3:0.6b", prompt="x", think="high")
    assert gen.thinking
    with pytest.raises(ollama.ResponseError, match="does not support thinking") as ex:
        client.chat(model="llama3.2:3b", messages=hi(), think=True)
    assert ex.value.status_code == 400


def test_tools(client: ollama.Client) -> None:
    ask = hi("What is the weather like in Paris today?")
    reply = client.chat(model="llama3.2:3b", messages=ask, tools=[WEATHER])
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Paris", "unit": "celsius"}
    assert reply.done_reason == "stop" and reply.message.content == ""
    # After the tool answered, the model talks again.
    followup = [
        *ask,
        reply.message,
        {"role": "tool", "content": "21 C", "tool_name": "get_weather"},
    ]
    answer = client.chat(model="llama3.2:3b", messages=followup, tools=[WEATHER])
    assert answer.message.content and not answer.message.tool_calls
    unrelated = client.chat(model="llama3.2:3b", messages=hi(), tools=[WEATHER])
    assert not unrelated.message.tool_calls
    streamed = list(
        client.chat(model="llama3.2:3b", messages=ask, tools=[WEATHER], stream=True)
    )
    assert any(c.message.tool_calls for c in streamed)


def test_images(client: ollama.Client, raw: httpx.Client) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()
    msg = [{"role": "user", "content": "what is this?", "images": [png]}]
    assert client.chat(model="llava:7b", messages=msg).message.content
    # The client refuses bad base64 itself; send it raw.
    bad = raw.post(
        "/api/generate",
        json={"model": "llava:7b", "prompt": "x", "images": ["%%%not base64%%%"]},
    )
    assert bad.status_code == 400 and "base64" in bad.json()["error"]


def test_embeddings(client: ollama.Client) -> None:
    one = client.embed(model="nomic-embed-text", input="hello").embeddings
    batch = client.embed(model="nomic-embed-text", input=["hello", "world"]).embeddings
    assert len(one) == 1 and len(batch) == 2 and len(one[0]) == sm.EMBED_DIM
    assert one[0] == batch[0] != batch[1]
    assert math.isclose(math.fsum(v * v for v in one[0]), 1.0, rel_tol=1e-6)
    cut = client.embed(model="nomic-embed-text", input="hello", dimensions=8)
    assert len(cut.embeddings[0]) == 8
    assert math.isclose(math.fsum(v * v for v in cut.embeddings[0]), 1.0, rel_tol=1e-6)
    legacy = client.embeddings(model="nomic-embed-text", prompt="hello").embedding
    assert len(legacy) == sm.EMBED_DIM
    assert client.embeddings(model="nomic-embed-text", prompt="").embedding == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.chat(model="nope", messages=hi()), "model 'nope' not found"),
        (lambda c: c.generate(model="nope", prompt="x"), "model 'nope' not found"),
        (
            lambda c: c.embed(model="nope", input="x"),
            'model "nope" not found, try pulling it first',
        ),
        (lambda c: c.show("nope"), "model 'nope:latest' not found"),
    ],
)
def test_unknown_model_is_ollamas_404(client: ollama.Client, call, message) -> None:
    with pytest.raises(ollama.ResponseError) as ex:
        call(client)
    assert ex.value.status_code == 404 and ex.value.error == message


# ---------------------------------------------------------------- raw HTTP


def test_ndjson_framing_and_plain_routes(raw: httpx.Client) -> None:
    body = {"model": "llama3.2:3b", "messages": hi()}  # stream defaults to true
    with raw.stream("POST", "/api/chat", json=body) as resp:
        assert resp.headers["content-type"] == "application/x-ndjson"
        data = resp.read()
    assert data.endswith(b"}\n") and b"\n\n" not in data
    lines = [json.loads(line) for line in data.split(b"\n")[:-1]]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", lines[0]["created_at"]
    )
    root = raw.get("/")
    assert root.text == "Ollama is running" and root.headers["content-type"].startswith(
        "text/plain"
    )
    assert raw.head("/").status_code == 200 and raw.head("/api/tags").status_code == 200
    assert raw.get("/api/version").json() == {"version": "0.33.0"}
    assert raw.get("/nope").text == "404 page not found"
    missing = raw.post("/api/chat", content=b"")
    assert missing.status_code == 400 and missing.json() == {
        "error": "missing request body"
    }
    assert raw.post("/api/chat", json={"messages": []}).json() == {
        "error": "model is required"
    }
    assert raw.post(
        "/api/embed", json={"model": "nomic-embed-text", "input": 3}
    ).json() == {"error": "invalid input type"}


def test_fault_error_and_garbage(raw: httpx.Client) -> None:
    body = {"model": "llama3.2:3b", "messages": hi(), "stream": False}
    raw.post("/_sim/fault", json={"mode": "error", "times": 1})
    failed = raw.post("/api/chat", json=body)
    assert failed.status_code == 500 and "error" in failed.json()
    assert raw.post("/api/chat", json=body).status_code == 200  # times: 1 used up
    raw.post("/_sim/fault", json={"mode": "garbage"})
    junk = raw.post("/api/chat", json=body)
    with pytest.raises(ValueError):
        json.loads(junk.content)
    assert raw.get("/api/tags").status_code == 200  # default paths: inference only
    raw.post("/_sim/fault", json={"mode": "error", "paths": ["*"]})
    assert raw.get("/api/tags").status_code == 500
    bad = raw.post("/_sim/fault", json={"mode": "melt"})
    assert bad.status_code == 400 and "mode must be one of" in bad.json()["error"]
    bad = raw.post("/_sim/fault", json={"mode": "slow", "delay_s": "soon"})
    assert bad.status_code == 400 and "bad fault value" in bad.json()["error"]
    bad = raw.post("/_sim/fault", json={"mode": "slow", "paths": "/api/chat"})
    assert bad.status_code == 400 and "paths" in bad.json()["error"]


def test_fault_cut_mid_stream(raw: httpx.Client) -> None:
    raw.post("/_sim/fault", json={"mode": "cut-mid-stream", "after_chunks": 3})
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with raw.stream(
            "POST", "/api/chat", json={"model": "llama3.2:3b", "messages": hi()}
        ) as resp:
            for line in resp.iter_lines():
                received.append(json.loads(line))
    assert len(received) == 3 and not any(r["done"] for r in received)
    with pytest.raises(httpx.RemoteProtocolError):
        raw.post(
            "/api/chat",
            json={"model": "llama3.2:3b", "messages": hi(), "stream": False},
        )


def test_fault_slow_and_hang_time_out(raw: httpx.Client) -> None:
    body = {"model": "llama3.2:3b", "messages": hi(), "stream": False}
    raw.post("/_sim/fault", json={"mode": "slow", "delay_s": 5, "times": 1})
    with pytest.raises(httpx.ReadTimeout):
        raw.post("/api/chat", json=body, timeout=0.3)
    raw.post("/_sim/fault", json={"mode": "hang", "times": 1})
    with pytest.raises(httpx.ReadTimeout):
        raw.post("/api/chat", json=body, timeout=0.3)
    assert raw.post("/api/chat", json=body).status_code == 200


def test_stats_count_what_was_served(raw: httpx.Client) -> None:
    raw.delete("/_sim/stats")
    for _ in range(3):
        raw.post(
            "/api/chat",
            json={"model": "llama3.2:3b", "messages": hi(), "stream": False},
        )
    raw.get("/api/tags")
    stats = raw.get("/_sim/stats").json()
    assert stats["paths"] == {"/api/chat": 3, "/api/tags": 1}
    assert stats["models"] == {"llama3.2:3b": 3} and stats["requests"] == 4


def test_streams_at_the_configured_rate_and_exits_on_sigterm() -> None:
    proc, url = start_sim("--tps", "200", "--tokens", "5", "--fault", "cut-mid-stream")
    try:
        chunks = []
        with pytest.raises(httpx.RemoteProtocolError):
            with httpx.stream(
                "POST",
                url + "/api/generate",
                timeout=10,
                json={"model": "llama3.2:3b", "prompt": "x"},
            ) as resp:
                chunks.extend(resp.iter_lines())
        assert len(chunks) == 2  # --fault sets the initial mode; default after 2
        httpx.post(url + "/_sim/fault", json={"mode": "ok"})
        reply = httpx.post(
            url + "/api/generate",
            timeout=10,
            json={"model": "llama3.2:3b", "prompt": "x", "stream": False},
        ).json()
        assert reply["eval_count"] == 5
        # 5 tokens at 200/s: the reported eval time follows the rate.
        assert reply["eval_duration"] == 25_000_000
    finally:
        assert stop_sim(proc) == 0


# ---------------------------------------------------------------- in-process


def test_control_routes_answer_loopback_only() -> None:
    app = testing.TestClient(create_app(SimState.from_names(["llama3.2:3b"])))
    away = app.simulate_get("/_sim/stats", remote_addr="10.1.2.3")
    assert away.status_code == 403
    assert app.simulate_get("/_sim/stats", remote_addr="127.0.0.1").status_code == 200
    assert app.simulate_get("/_sim/stats", remote_addr="::1").status_code == 200
    # IPv4 loopback as a dual-stack ([::]) bind sees it.
    mapped = app.simulate_get("/_sim/stats", remote_addr="::ffff:127.0.0.1")
    assert mapped.status_code == 200
    away = app.simulate_get("/_sim/stats", remote_addr="::ffff:10.1.2.3")
    assert away.status_code == 403


def test_keep_alive_parsing() -> None:
    assert parse_keep_alive(None) == 300
    assert parse_keep_alive(60) == 60 and parse_keep_alive(-1) == -1
    assert parse_keep_alive("5m") == 300 and parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("0") == 0 and parse_keep_alive("-1m") == -60
    with pytest.raises(SimError, match="missing unit"):
        parse_keep_alive("3600")


def test_fault_times_runs_out() -> None:
    state = SimState.from_names(["m"])
    state.fault = Fault(mode="error", times=2)
    assert state.take_fault("/api/chat") and state.take_fault("/api/chat")
    assert state.take_fault("/api/chat") is None and state.fault.mode == "ok"
    assert state.take_fault("/api/tags") is None


def test_compose_stop_and_schema() -> None:
    model = sm.SimModel("llama3.2:3b")
    full = sm.compose(model, "p", options={}, tokens=10)
    text = "".join(full.content)
    word = full.content[4].strip()
    cut = sm.compose(model, "p", options={"stop": [word]}, tokens=10)
    assert "".join(cut.content) == text[: text.index(word)]
    assert cut.done_reason == "stop"
    schema = {
        "type": "object",
        "required": ["x"],
        "properties": {
            "x": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "kind": {"enum": ["a", "b"]},
        },
    }
    value = json.loads("".join(sm.compose(model, "p", options={}, fmt=schema).content))
    assert isinstance(value["x"], float) and value["kind"] == "a"


def test_busy_port_is_one_clean_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "herd", "sim", "--port", port],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"herd sim: cannot listen on 127.0.0.1:{port}")
