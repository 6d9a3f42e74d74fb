"""Regression tests from an attack run on the OpenAI-node, upload and responses routes.

One real router (`herd serve`, gunicorn + gevent) in front of one hostile
OpenAI-compatible node: a raw-socket server in this process whose answer to
the next request is chosen by each test (`HostileNode.mode`). It answers the
router's polls (/v1/models, /health) honestly and records the last request
it was sent, so a test can see what the router passed on.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from herd.router.http import multipart as mp
from tests.router.routerproc import Router, start_router

TOKEN = "node-token-7f3a9c1e5b"
MODELS = ("evil-chat", "evil-whisper")
#: More than the router holds of one answer (herd.router.routing.proxy).
OVERSIZE = 130 * 1024 * 1024


class HostileNode:
    """An OpenAI-compatible node whose answers a test chooses."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.last = b""
        #: Set to let a stalled answer go (at teardown).
        self.stalled = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                if self.mode == "stall_upload":  # reads the head, then nothing
                    conn.recv(512)
                    self.stalled.wait(15)
                    return
                path, raw = _read_request(conn)
                self._answer(conn, path, raw)
            except OSError:
                pass

    def _answer(self, conn: socket.socket, path: str, raw: bytes) -> None:
        if path == "/v1/models":
            ids = [{"id": m, "object": "model"} for m in MODELS]
            return _send(conn, 200, json.dumps({"object": "list", "data": ids}))
        if path == "/health":
            return _send(conn, 200, "{}")
        self.last = raw
        mode = self.mode
        if mode == "ok" and path.startswith("/v1/audio"):
            return _send(conn, 200, '{"text":"hi"}')
        if mode == "ok":
            return _send(conn, 200, json.dumps(_completion()))
        if mode in ("stall_upload", "never_answer"):
            return self.stalled.wait(15)  # (the request was read, or not)
        if mode == "bad_types":
            chunk = _completion()
            chunk["choices"][0] = {"index": 0, "delta": {"content": 1}}
            chunk["usage"] = {"prompt_tokens": "x", "completion_tokens": 1e308}
            events = b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
            return conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Connection: close\r\n\r\n" + events
            )
        if mode == "html":
            page = b"<script>fetch('/dashboard/api/overview')</script>"
            return conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(page), page)
            )
        if mode == "echo_token":
            message = f"Incorrect API key provided: {TOKEN}"
            return _send(conn, 401, json.dumps({"error": {"message": message}}))
        if mode == "huge_head":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            line = b"X-Junk: " + b"a" * 1000 + b"\r\n"
            for _ in range(2000):  # 2 MB of headers, then it gives up
                conn.sendall(line)
            return
        if mode in ("huge_body", "endless_line"):
            kind = b"application/json" if mode == "huge_body" else b"text/event-stream"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\n"
                b"Connection: close\r\n\r\ndata: " + b"a" * 100
            )
            block = b"a" * (1 << 20)
            for _ in range(OVERSIZE >> 20):
                conn.sendall(block)
            return
        raise AssertionError(f"unknown mode {mode}")


def _read_request(conn: socket.socket) -> tuple[str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return "", data
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    if b"content-length:" in head:
        size = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        while len(data.split(b"\r\n\r\n", 1)[1]) < size:
            data += conn.recv(65536)
    elif b"transfer-encoding: chunked" in head:
        while not data.endswith(b"\r\n0\r\n\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b" ", 2)[1].decode(), data


def _send(conn: socket.socket, status: int, body: str) -> None:
    data = body.encode()
    conn.sendall(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(data), data)
    )


def _completion() -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "evil-chat",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Router, HostileNode]]:
    node = HostileNode()
    state = tmp_path_factory.mktemp("attack-s3")
    token_file = state / "node.token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    doc = {
        "apiVersion": "herd/v1",
        "kind": "Fleet",
        "metadata": {"name": "attack"},
        "router": {
            "listen": "127.0.0.1:11435",
            "node_networks": ["127.0.0.0/8"],
            "clients": [
                {"name": "local", "networks": ["127.0.0.0/8"], "operator": True}
            ],
            "limits": {
                "max_body_mb": 1,
                "max_audio_mb": 1,
                "connect_timeout_s": 2,
                # Long enough for the router to take in an oversized answer.
                "first_byte_timeout_s": 30,
                "retries": 0,
            },
        },
        "nodes": [
            {
                "name": "evil",
                "url": node.url,
                "api": "openai",
                "token_file": str(token_file),
                "max_concurrency": 4,
            }
        ],
        "models": [{"name": m, "place": {"nodes": ["evil"]}} for m in MODELS],
    }
    # Generous waits: only a busy machine makes them matter.
    router = start_router(state, yaml.safe_dump(doc), state / "router.log", timeout=60)
    try:
        router.wait_nodes_up(1, timeout=60)
        yield router, node
    finally:
        router.stop()
        node.stalled.set()
        node.sock.close()


def _post(
    router: Router, path: str, body: Any, timeout: float = 60
) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(router.url + path, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as ex:
        return ex.code, ex.read()


def _chat(stream: bool = False) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    return {"model": "evil-chat", "messages": messages, "stream": stream}


def _healthy_after(router: Router, node: HostileNode) -> None:
    node.mode = "ok"
    assert _post(router, "/v1/chat/completions", _chat())[0] == 200


# -- a hostile node's answer: bounded memory, a clean error, no hang ------------


def test_node_head_without_end_is_a_clean_502(lab: tuple[Router, HostileNode]) -> None:
    router, node = lab
    node.mode = "huge_head"
    status, body = _post(router, "/v1/chat/completions", _chat())
    assert status == 502, body
    assert b"answer head over 65536 bytes" in body
    _healthy_after(router, node)


@pytest.mark.parametrize(
    ("mode", "path", "body"),
    [
        ("huge_body", "/v1/chat/completions", _chat()),
        ("endless_line", "/v1/chat/completions", _chat(stream=True)),
    ],
)
def test_node_answer_past_the_cap_is_a_clean_502(
    lab: tuple[Router, HostileNode], mode: str, path: str, body: dict[str, Any]
) -> None:
    """A body (or one stream line) over the cap is refused as it arrives: the
    worker neither holds it all nor rescans it per read (which froze it)."""
    router, node = lab
    node.mode = mode
    status, answer = _post(router, path, body)
    assert status == 502, answer
    assert b"over 128 MiB" in answer
    _healthy_after(router, node)


def test_node_echoing_its_token_does_not_pass_it_on(
    lab: tuple[Router, HostileNode],
) -> None:
    router, node = lab
    node.mode = "echo_token"
    for path in ("/v1/chat/completions", "/api/chat"):
        status, body = _post(router, path, _chat())
        assert status == 401, body
        assert TOKEN.encode() not in body
        assert b"[redacted]" in body
    assert f"Bearer {TOKEN}".encode() in node.last  # it was sent, to the node only
    assert TOKEN not in router.log()


# -- multipart uploads -----------------------------------------------------------


def _form(*parts: tuple[bytes, bytes], boundary: bytes = b"XyZ") -> bytes:
    out = b""
    for head, value in parts:
        out += b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def _field(name: str, value: str) -> tuple[bytes, bytes]:
    head = f'Content-Disposition: form-data; name="{name}"'.encode()
    return head, value.encode()


def _file(content_type: bytes = b"audio/wav") -> tuple[bytes, bytes]:
    head = (
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: " + content_type
    )
    return head, b"RIFF-audio-bytes"


def _upload(router: Router, form: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(
        router.url + "/v1/audio/transcriptions", data=form, method="POST"
    )
    req.add_header("Content-Type", "multipart/form-data; boundary=XyZ")
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as ex:
        return ex.code, ex.read()


@pytest.mark.parametrize(
    "content_type",
    [b"audio/wav\nX-Injected: 1", b"audio/wav\rX", b"audio/wav\x00", b"a\x0bb"],
)
def test_part_header_control_characters_are_refused(
    lab: tuple[Router, HostileNode], content_type: bytes
) -> None:
    """A bare LF in a part header became a line break in the form sent on."""
    router, node = lab
    node.mode, node.last = "ok", b""
    form = _form(_field("model", "evil-whisper"), _file(content_type))
    status, body = _upload(router, form)
    assert status == 400, body
    assert b"control characters" in body
    assert node.last == b""


def test_forwarded_part_headers_carry_no_control_characters() -> None:
    head = mp.file_head(b"B", "file", 'a"\n.wav', "audio/wav\nX-Injected: 1")
    assert head.count(b"\n") == head.count(b"\r\n") == 4  # its own line ends
    assert b"audio/wav X-Injected: 1\r\n" in head
    assert b'filename="a\\" .wav"' in head


def test_transcription_is_never_relayed_as_a_page(
    lab: tuple[Router, HostileNode],
) -> None:
    """A node's text/html answer made the router's origin serve its page (a
    form POST from any site could then read the operator's dashboard API)."""
    router, node = lab
    node.mode = "html"
    req = urllib.request.Request(
        router.url + "/v1/audio/transcriptions",
        data=_form(_field("model", "evil-whisper"), _file()),
        method="POST",
    )
    req.add_header("Content-Type", "multipart/form-data; boundary=XyZ")
    with urllib.request.urlopen(req, timeout=30) as reply:
        assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("response_format", "bogus"),
        ("temperature", "nan"),
        ("temperature", "inf"),
        ("language", "../x"),
    ],
)
@pytest.mark.parametrize("after_file", [False, True])
def test_form_fields_are_checked_wherever_they_come(
    lab: tuple[Router, HostileNode], name: str, value: str, after_file: bool
) -> None:
    """Fields after the file (the audio already streaming) went to the node
    unchecked; a non-finite temperature passed everywhere."""
    router, node = lab
    node.mode = "ok"
    parts = [_field("model", "evil-whisper"), _file()]
    parts.insert(2 if after_file else 1, _field(name, value))
    status, body = _upload(router, _form(*parts))
    assert status == 400, body
    assert json.loads(body)["error"]["param"] == name


# -- /v1/responses -----------------------------------------------------------------


@pytest.mark.parametrize("entry", [{}, [], [1]])
def test_responses_include_entry_of_any_type_is_a_400(
    lab: tuple[Router, HostileNode], entry: Any
) -> None:
    router, _ = lab
    body = {"model": "evil-chat", "input": "hi", "include": [entry]}
    status, answer = _post(router, "/v1/responses", body)
    assert status == 400, answer
    assert json.loads(answer)["error"]["param"] == "include[0]"


@pytest.mark.parametrize(
    "path", ["/v1/responses", "/v1/chat/completions", "/api/chat", "/api/generate"]
)
def test_node_chunk_of_the_wrong_shape_ends_the_stream_cleanly(
    lab: tuple[Router, HostileNode], path: str
) -> None:
    """`"content": 1` broke the /v1/responses converter (a traceback, the
    stream cut without an error event); `"prompt_tokens": "x"` broke the
    token metrics. Both are the node's to get wrong, never a crash."""
    router, node = lab
    node.mode = "bad_types"
    body: dict[str, Any] = {"model": "evil-chat", "stream": True}
    if path == "/v1/responses":
        body["input"] = "hi"
    elif path == "/api/generate":
        body["prompt"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    status, answer = _post(router, path, body)
    assert status == 200, answer
    if path == "/v1/responses":
        assert b"event: response.failed" in answer
        assert b"malformed chunk" in answer
    assert "Traceback" not in router.log()


def test_router_log_has_no_traceback(lab: tuple[Router, HostileNode]) -> None:
    router, _ = lab
    assert "Traceback" not in router.log()


@pytest.mark.parametrize(
    ("mode", "size"), [("stall_upload", 32 << 20), ("never_answer", 1000)]
)
def test_upload_to_a_stalled_node_ends(mode: str, size: int) -> None:
    """The upload's sends and the wait for the node's answer had no deadline
    in the router's worker: a node that stopped reading (or never answered)
    held the request and its node slot for ever."""
    import gevent

    from herd.router.routing.proxy import UploadBroken, Upstream

    node = HostileNode()
    node.mode = mode
    upstream = Upstream(swept=True)
    block = b"a" * (1 << 20)
    try:
        task = gevent.spawn(
            upstream.upload,
            node.url,
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=B",
            iter([block] * (size >> 20) or [b"a" * size]),
            network_s=0.5,
        )
        task.join(10)
        assert task.ready(), "the upload still hangs"
        assert isinstance(task.exception, UploadBroken)
    finally:
        node.stalled.set()
        node.sock.close()
        upstream.close()
