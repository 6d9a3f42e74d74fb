"""OpenAI-compatible nodes, image generation and transcription, end to end.

One router (real gunicorn + gevent) in front of two real `herd sim` nodes: `oa`
speaks the OpenAI API (`--api openai`, with a bearer token) and serves a chat,
an embedding, an image and a speech-to-text model; `ol` speaks Ollama's API and
serves a chat and an image model. The clients are the official `openai` and
`ollama` SDKs, curl and raw HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import struct
import subprocess
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import psutil
import pytest
import yaml

from tests.router.routerproc import Router, Sim, manifest, start_router, start_sim

NODE_TOKEN = "node-bearer-7f3a9c1e5d"
CHAT = "Qwen/Qwen2.5-7B-Instruct"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("backends")
    token = tmp / "oa.token"
    token.write_text(NODE_TOKEN + "\n")
    os.chmod(token, 0o600)
    oa = start_sim(
        "oa",
        0,
        f"{CHAT},text-embed-small,flux-schnell,whisper-large-v3",
        extra=("--api", "openai", "--token-file", str(token)),
    )
    ol = start_sim("ol", 0, "llama3.2:3b,z-image-turbo")
    doc = yaml.safe_load(manifest([oa, ol]))
    doc["nodes"][0].update(api="openai", token_file=str(token))
    doc["router"]["limits"].update(max_audio_mb=150, first_byte_timeout_s=10)
    on_oa, on_ol = {"nodes": ["oa"]}, {"nodes": ["ol"]}
    doc["models"] = [
        {"name": CHAT, "aliases": ["qwen"], "place": on_oa},
        {"name": "text-embed-small", "place": on_oa},
        {"name": "flux-schnell", "place": on_oa},
        {"name": "whisper-large-v3", "place": on_oa},
        {"name": "llama3.2:3b", "place": on_ol},
        {"name": "z-image-turbo", "place": on_ol},
    ]
    router = start_router(tmp / "state", yaml.safe_dump(doc), tmp / "router.log")
    try:
        router.wait_nodes_up(2)
        yield {"router": router, "oa": oa, "ol": ol, "tmp": tmp}
    finally:
        router.stop()
        oa.kill()
        ol.kill()


def _oai(router: Router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)


def _post(router: Router, path: str, body: bytes, ctype: str) -> tuple[int, bytes]:
    req = urllib.request.Request(router.url + path, data=body, method="POST")
    req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as ex:
        return ex.code, ex.read()


def _wav(path: Path, seconds: float = 0.5) -> bytes:
    """A real 16 kHz mono WAV (a ramp), written with the wave module."""
    frames = b"".join(
        struct.pack("<h", (i * 37) % 20000 - 10000) for i in range(int(16000 * seconds))
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(frames)
    return path.read_bytes()


def _heard(data: bytes) -> str:
    """What the sim transcribes `data` as (its sha256 prefix and length)."""
    return f"audio {hashlib.sha256(data).hexdigest()[:16]} {len(data)} bytes"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# -- OpenAI nodes, both client APIs ---------------------------------------------


def test_ollama_sdk_served_by_an_openai_node(fleet: dict[str, Any]) -> None:
    client = ollama.Client(host=fleet["router"].url, timeout=30)
    reply = client.chat(model="qwen", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content and reply.done and reply.done_reason == "stop"
    assert reply.eval_count and reply.prompt_eval_count
    parts = list(
        client.chat(
            model="qwen", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert "".join(p.message.content for p in parts) == reply.message.content
    assert parts[-1].done and parts[-1].eval_count == reply.eval_count
    generated = client.generate(model="qwen", prompt="hello")
    assert generated.response and generated.done
    embedded = client.embed(model="text-embed-small", input=["a", "b"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) > 8
    # Vision: an Ollama image (plain base64) travels as an image_url part.
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    seen = client.chat(
        model="qwen",
        messages=[{"role": "user", "content": "what is this", "images": [png]}],
    )
    assert seen.message.content


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_tool_calls_through_an_openai_node(
    fleet: dict[str, Any], stream: bool
) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    client = ollama.Client(host=fleet["router"].url, timeout=30)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    result = client.chat(model="qwen", messages=messages, tools=[tool], stream=stream)
    parts = list(result) if stream else [result]
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Paris"}
    # The answer to the call goes back as a tool message (tool_call_id derived).
    follow = client.chat(
        model="qwen",
        messages=[
            *messages,
            {"role": "assistant", "content": "", "tool_calls": [calls[0]]},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
    )
    assert follow.message.content


def test_fields_an_openai_node_cannot_take_are_named(fleet: dict[str, Any]) -> None:
    client = ollama.Client(host=fleet["router"].url, timeout=30)
    with pytest.raises(ollama.ResponseError, match="options.mirostat") as ex:
        client.chat(
            model="qwen",
            messages=[{"role": "user", "content": "hi"}],
            options={"mirostat": 1},
        )
    assert ex.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="'suffix'"):
        client.generate(model="qwen", prompt="def f(", suffix="return 1")
    # Options that only size the runtime are dropped, not refused.
    ok = client.chat(
        model="qwen",
        messages=[{"role": "user", "content": "hi"}],
        options={"num_ctx": 8192, "num_predict": 3, "temperature": 0.1},
    )
    assert ok.done_reason == "length" and ok.eval_count == 3
    assert client.show("qwen").capabilities == ["completion", "tools", "vision"]


def test_openai_sdk_to_an_openai_node_passes_through(fleet: dict[str, Any]) -> None:
    client = _oai(fleet["router"])
    done = client.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content and done.usage.total_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="qwen",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    vectors = client.embeddings.create(model="text-embed-small", input=["x", "y"])
    assert [d.index for d in vectors.data] == [0, 1]
    # A field Ollama could not carry is fine for an OpenAI node: passed as is.
    logit = client.chat.completions.create(
        model="qwen",
        messages=[{"role": "user", "content": "hi"}],
        logit_bias={"50256": -100},
    )
    assert logit.choices[0].message.content


def test_openai_node_answers_name_the_model_the_client_asked_for(
    fleet: dict[str, Any],
) -> None:
    """Not the node's own id: an alias stays the alias, as from an Ollama node
    (whose OpenAI layer answers with the name asked for)."""
    client = _oai(fleet["router"])
    hi = [{"role": "user", "content": "hi"}]
    for asked in ("qwen", CHAT):
        done = client.chat.completions.create(model=asked, messages=hi)
        assert done.model == asked
        chunks = list(
            client.chat.completions.create(
                model=asked,
                messages=hi,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks and {c.model for c in chunks} == {asked}
    vectors = client.embeddings.create(model="text-embed-small", input=["x"])
    assert vectors.model == "text-embed-small"


def test_responses_api_reaches_an_openai_node_as_chat(fleet: dict[str, Any]) -> None:
    client = _oai(fleet["router"])
    answer = client.responses.create(model="qwen", input="hi", instructions="be brief")
    assert answer.output_text and answer.usage.output_tokens > 0
    events = list(client.responses.create(model="qwen", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert fleet["oa"].stats()["paths"].get("/v1/responses") is None


def test_openai_sdk_served_by_an_ollama_node(fleet: dict[str, Any]) -> None:
    done = _oai(fleet["router"]).chat.completions.create(
        model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content and done.model == "llama3.2:3b"


def test_openai_node_stream_cut_ends_cleanly(fleet: dict[str, Any]) -> None:
    oa: Sim = fleet["oa"]
    oa.fault("cut-mid-stream", after_chunks=2, times=2)
    try:
        client = ollama.Client(host=fleet["router"].url, timeout=30)
        with pytest.raises(ollama.ResponseError, match="failed mid-stream"):
            list(
                client.chat(
                    model="qwen",
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                )
            )
        body = json.dumps(
            {
                "model": "qwen",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
        ).encode()
        status, data = _post(
            fleet["router"], "/v1/chat/completions", body, "application/json"
        )
        assert status == 200
        assert b"failed mid-stream" in data and data.endswith(b"data: [DONE]\n\n")
    finally:
        oa.fault("ok")


def test_node_token_is_sent_and_never_shown(fleet: dict[str, Any]) -> None:
    router: Router = fleet["router"]
    status, doc = router.get("/fleet/status")
    oa = next(n for n in doc["nodes"] if n["name"] == "oa")
    assert oa["state"] == "up"  # the sim refuses /v1/models without the token
    assert "qwen/qwen2.5-7b-instruct:latest" in oa["models_on_disk"]
    seen = [json.dumps(doc), json.dumps(router.get("/fleet/nodes")[1]), router.log()]
    for path in Path(router.state_dir).rglob("*"):
        if path.is_file():
            seen.append(path.read_bytes().decode("latin-1"))
    assert all(NODE_TOKEN not in text for text in seen)


# -- model kinds ------------------------------------------------------------------


def test_requests_to_the_wrong_kind_of_model_are_refused(fleet: dict[str, Any]) -> None:
    router = fleet["router"]
    chat = json.dumps(
        {"model": "whisper-large-v3", "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    status, data = _post(router, "/api/chat", chat, "application/json")
    assert status == 400 and b"transcribe model" in data and b"/api/transcribe" in data
    status, data = _post(router, "/v1/chat/completions", chat, "application/json")
    assert status == 400 and json.loads(data)["error"]["param"] == "model"
    image = json.dumps({"model": "qwen", "prompt": "x", "width": 64, "height": 64})
    status, data = _post(
        router, "/api/generate-image", image.encode(), "application/json"
    )
    assert status == 400 and b"chat model" in data
    assert fleet["oa"].stats()["models"].get("whisper-large-v3:latest", 0) == 0


# -- images ---------------------------------------------------------------------


def test_openai_sdk_images_generate(fleet: dict[str, Any]) -> None:
    client = _oai(fleet["router"])
    first = client.images.generate(
        model="flux-schnell",
        prompt="a red fox",
        size="96x64",
        response_format="b64_json",
    )
    png = base64.b64decode(first.data[0].b64_json)
    assert _png_size(png) == (96, 64) and first.created > 0
    # Deterministic, and b64_json is what herd asks for when unset.
    again = client.images.generate(
        model="flux-schnell", prompt="a red fox", size="96x64"
    )
    assert base64.b64decode(again.data[0].b64_json) == png
    with pytest.raises(openai.BadRequestError, match="url"):
        client.images.generate(model="flux-schnell", prompt="x", response_format="url")


@pytest.mark.parametrize("model", ["flux-schnell", "z-image-turbo"])
def test_generate_image_answers_png_bytes(fleet: dict[str, Any], model: str) -> None:
    body = {"model": model, "prompt": "a cat", "width": 128, "height": 80}
    body |= {"steps": 4, "seed": 7, "negative_prompt": "dogs"}
    status, data = _post(
        fleet["router"],
        "/api/generate-image",
        json.dumps(body).encode(),
        "application/json",
    )
    assert status == 200 and _png_size(data) == (128, 80)
    out = fleet["tmp"] / f"{model}.png"
    result = subprocess.run(
        ["curl", "-sS", "-o", str(out), "-d", json.dumps(body)]
        + [fleet["router"].url + "/api/generate-image"],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0 and out.read_bytes() == data


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "width": 32, "height": 64}, "width"),
        ({"prompt": "x", "width": 64, "height": 99999}, "height"),
        ({"prompt": "x", "width": 64}, "height"),
        ({"prompt": "x", "width": 64, "height": 64, "steps": 0}, "steps"),
        ({"prompt": "", "width": 64, "height": 64}, "prompt"),
        ({"prompt": "x", "width": 64, "height": 64, "style": "y"}, "style"),
    ],
)
def test_generate_image_bounds(fleet: dict[str, Any], body: dict, field: str) -> None:
    data = json.dumps({"model": "flux-schnell", **body}).encode()
    status, answer = _post(
        fleet["router"], "/api/generate-image", data, "application/json"
    )
    assert status == 400 and f"'{field}'".encode() in answer


# -- transcription --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_openai_sdk_transcribes_a_real_wav(fleet: dict[str, Any]) -> None:
    path = fleet["tmp"] / "speech.wav"
    audio = _wav(path)
    client = _oai(fleet["router"])
    with path.open("rb") as fh:
        text = client.audio.transcriptions.create(model="whisper-large-v3", file=fh)
    assert text.text == _heard(audio)
    with path.open("rb") as fh:
        srt = client.audio.transcriptions.create(
            model="whisper-large-v3", file=fh, response_format="srt"
        )
    assert "-->" in srt and _heard(audio) in srt
    with path.open("rb") as fh:
        english = client.audio.translations.create(model="whisper-large-v3", file=fh)
    assert english.text.endswith(_heard(audio))


def test_curl_file_first_transcribe(fleet: dict[str, Any]) -> None:
    path = fleet["tmp"] / "meeting.wav"
    audio = _wav(path, 0.25)
    result = subprocess.run(
        ["curl", "-sS", fleet["router"].url + "/api/transcribe"]
        + ["-F", f"file=@{path}", "-F", "model=whisper-large-v3", "-F", "language=de"],
        capture_output=True,
        timeout=30,
    )
    answer = json.loads(result.stdout)
    assert answer["text"] == _heard(audio) and answer["language"] == "de"
    assert answer["duration"] > 0 and answer["segments"][0]["text"] == _heard(audio)


def _form(*parts: tuple[str, bytes, str | None], boundary: str = "b0und") -> bytes:
    out = b""
    for name, value, filename in parts:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
        if filename:
            out += f'; filename="{filename}"'.encode()
        out += b"\r\n\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


FORM = "multipart/form-data; boundary=b0und"
MODEL = ("model", b"whisper-large-v3", None)
FILE = ("file", b"RIFF....WAVE", "a.wav")


@pytest.mark.parametrize(
    ("body", "ctype", "says"),
    [
        (_form(MODEL, FILE), "application/json", b"multipart/form-data"),
        (_form(MODEL, FILE), "multipart/form-data", b"boundary"),
        (_form(MODEL, FILE)[:-12], FORM, b"truncated"),
        (_form(MODEL, FILE).replace(b"--b0und\r\n", b"--other\r\n", 1), FORM, b"start"),
        (_form(MODEL), FORM, b"'file'"),
        (_form(FILE), FORM, b"model"),
        (_form(MODEL, FILE, MODEL), FORM, b"twice"),
        (_form(MODEL, FILE, ("speed", b"2", None)), FORM, b"'speed'"),
        (_form(MODEL, ("file", b"x", None)), FORM, b"file upload"),
        (
            _form(MODEL, FILE, ("response_format", b"mp3", None)),
            FORM,
            b"response_format",
        ),
        (
            b'--b0und\r\nContent-Disposition: form-data; name="x"\r\nX-Pad: '
            + b"a" * 9000
            + b"\r\n\r\n",
            FORM,
            b"headers are longer",
        ),
        (
            b"--b0und\r\nContent-Type: text/plain\r\n\r\nx\r\n--b0und--\r\n",
            FORM,
            b"name",
        ),
    ],
)
def test_bad_multipart_is_a_400(
    fleet: dict[str, Any], body: bytes, ctype: str, says: bytes
) -> None:
    route = (
        "/v1/audio/transcriptions" if b"response_format" in says else "/api/transcribe"
    )
    status, answer = _post(fleet["router"], route, body, ctype)
    assert status == 400, answer
    assert says in answer


def test_audio_over_the_limit_is_a_413(fleet: dict[str, Any]) -> None:
    conn = http.client.HTTPConnection(fleet["router"].url.split("//")[1], timeout=30)
    conn.putrequest("POST", "/api/transcribe")
    conn.putheader("Content-Type", FORM)
    conn.putheader("Content-Length", str(200 * 1024 * 1024))
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 413 and b"max_audio_mb" in reply.read()
    conn.close()


def _worker_rss(router: Router) -> int:
    return sum(p.memory_info().rss for p in psutil.Process(router.proc.pid).children())


def test_100_mb_upload_streams_with_bounded_rss(fleet: dict[str, Any]) -> None:
    """Model first: the audio streams through the router to the node."""
    router: Router = fleet["router"]
    size = 100 * 1024 * 1024
    block = hashlib.sha256(b"noise").digest() * 2048  # 64 KiB
    digest = hashlib.sha256()
    peak = [0]

    def body() -> Iterator[bytes]:
        yield _form(MODEL).rsplit(b"--b0und--", 1)[0]
        yield b'--b0und\r\nContent-Disposition: form-data; name="file"; '
        yield b'filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        for i in range(size // len(block)):
            digest.update(block)
            if i % 256 == 0:
                peak[0] = max(peak[0], _worker_rss(router))
            yield block
        yield b"\r\n--b0und--\r\n"

    before = _worker_rss(router)
    conn = http.client.HTTPConnection(router.url.split("//")[1], timeout=120)
    conn.request("POST", "/api/transcribe", body=body(), headers={"Content-Type": FORM})
    reply = conn.getresponse()
    answer = json.loads(reply.read())
    conn.close()
    after = _worker_rss(router)
    assert reply.status == 200, answer
    assert answer["text"] == f"audio {digest.hexdigest()[:16]} {size} bytes"
    grown = max(peak[0], after) - before
    print(
        f"worker RSS before {before >> 20} MiB, peak {peak[0] >> 20} MiB, "
        f"grew {grown >> 20} MiB"
    )
    assert grown < 40 * 1024 * 1024


def test_audio_never_reaches_logs_or_traces(fleet: dict[str, Any]) -> None:
    marker = b"SECRET-AUDIO-PAYLOAD-4242"
    status, _ = _post(
        fleet["router"],
        "/api/transcribe",
        _form(MODEL, ("file", marker * 10, "x.wav")),
        FORM,
    )
    assert status == 200
    router: Router = fleet["router"]
    assert marker.decode() not in router.log()
    for path in Path(router.state_dir).rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes()


def test_passthrough_stream_takes_token_counts_from_its_usage_event():
    """An OpenAI node's SSE stream relayed as is: the counts of the trace row
    come from the event with `usage` (found by a byte search, then parsed),
    whatever else the events hold."""
    from types import SimpleNamespace

    from herd.router.routing.forward import Outcome
    from herd.router.routing.relay import _sse_passthrough

    events = [
        b'data: {"choices":[{"delta":{"content":"usage"}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n',
        b"data: [DONE]\n\n",
    ]
    opened = SimpleNamespace(first=events[0], rest=iter(events[1:]))
    outcome = Outcome(t0=0.0, started=0.0, route="/v1/chat/completions", method="POST")
    relayed = [e for e, _ in _sse_passthrough(opened, outcome, 1e18, lambda: 1.0)]
    assert relayed == events
    assert (outcome.tokens_in, outcome.tokens_out) == (3, 5)
