"""`herd sim --api openai`: the sim as an OpenAI-compatible server (vLLM-like).

Routes: GET /v1/models, GET /health, POST /v1/chat/completions (streaming,
tool calls, usage), /v1/completions, /v1/embeddings, /v1/images/generations
(a real, deterministic PNG as b64_json) and /v1/audio/transcriptions and
/translations (multipart; the text is derived from the uploaded bytes: their
sha256 prefix and length, so a test can tell the audio arrived whole). The
answers come from the same deterministic generator as the Ollama face
(herd.sim.models) and the same fault modes apply. With a token set, every
/v1 route and /health wants `Authorization: Bearer TOKEN` (else 401).

The image and transcription routes are mounted on the Ollama face as well
(Ollama serves image models at /v1/images/generations; its transcription is
simulated there for fleets that route speech to Ollama nodes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import falcon
import gevent

from herd.manifest.model import infer_kind
from herd.router.http import multipart as mp
from herd.sim import SimError, SimState
from herd.sim import models as sm
from herd.sim.png import render

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
SIDE_MAX = 4096


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class OpenAIError(Exception):
    """An OpenAI-shaped error answer."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def handle_error(req: Any, resp: Any, ex: Any, params: Any) -> None:
    status = ex.status
    resp.status = status
    resp.content_type = JSON_TYPE
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    resp.data = dumps(
        {
            "error": {
                "message": ex.message,
                "type": kind,
                "param": ex.param,
                "code": None,
            }
        }
    )


def listed_id(name: str) -> str:
    """A model's id as this face lists it: without Ollama's implied `:latest`."""
    return name[: -len(":latest")] if name.endswith(":latest") else name


class Face:
    """Shared by the routes: the sim state, the token and body reading."""

    def __init__(self, state: SimState, token: str | None = None):
        self.state = state
        self.token = token

    def auth(self, req: Any) -> None:
        if self.token is None:
            return
        given = req.get_header("Authorization") or ""
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise OpenAIError(401, "Incorrect API key provided")

    def body(self, req: Any) -> dict[str, Any]:
        self.auth(req)
        raw = req.bounded_stream.read()
        try:
            body = json.loads(raw)
        except ValueError as ex:
            raise OpenAIError(400, f"invalid JSON body: {ex}") from ex
        if not isinstance(body, dict):
            raise OpenAIError(400, "body must be a JSON object")
        return body

    def model(self, name: Any, kind: str | None = None) -> sm.SimModel:
        found = (
            self.state.models.get(sm.normalize(name)) if isinstance(name, str) else None
        )
        if found is None:
            raise OpenAIError(404, f"The model `{name}` does not exist.", "model")
        if kind is not None and infer_kind(found.name) != kind:
            raise OpenAIError(400, f"model `{name}` is not a {kind} model", "model")
        self.state.by_model[found.name] += 1
        return found


def _prompt(messages: Any) -> tuple[str, bool]:
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "messages must be a non-empty list", "messages")
    lines = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(
                p.get("text", "") for p in content if isinstance(p, dict)
            )
        lines.append(f"{message.get('role', '')}: {content or ''}")
    last = messages[-1].get("role") if isinstance(messages[-1], dict) else None
    return "\n".join(lines), last == "user"


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if isinstance(body.get("max_tokens"), int):
        options["num_predict"] = body["max_tokens"]
    if body.get("stop") is not None:
        options["stop"] = body["stop"]
    if body.get("seed") is not None:
        options["seed"] = body["seed"]
    return options


def _format(body: dict[str, Any]) -> Any:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        return "json"
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or "json"
    return None


def _calls(reply: sm.Reply) -> list[dict[str, Any]]:
    return [
        {
            "id": call.get("id") or "call_" + secrets.token_hex(4),
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": json.dumps(call["function"]["arguments"]),
            },
        }
        for call in reply.tool_calls
    ]


def _usage(reply: sm.Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.eval_count,
        "total_tokens": reply.prompt_tokens + reply.eval_count,
    }


def _finish(reply: sm.Reply) -> str:
    return "tool_calls" if reply.tool_calls else reply.done_reason


class Completions(Face):
    """POST /v1/chat/completions and /v1/completions."""

    def __init__(self, state: SimState, token: str | None, chat: bool):
        super().__init__(state, token)
        self.chat = chat

    def on_post(self, req: Any, resp: Any) -> None:
        body = self.body(req)
        model = self.model(body.get("model"))
        if model.embedding:
            raise OpenAIError(400, f"model `{model.name}` does not support chat")
        if self.chat:
            prompt, tool_turn = _prompt(body.get("messages"))
        else:
            prompt, tool_turn = str(body.get("prompt") or ""), False
        effort = body.get("reasoning_effort")
        reply = sm.compose(
            model,
            prompt,
            options=_options(body),
            think=model.thinking and effort != "none",
            fmt=_format(body),
            tools=body.get("tools") or () if self.chat else (),
            tool_turn=tool_turn,
            tokens=self.state.tokens,
            salt=self.state.seed,
        )
        self.state.touch(model, None)
        ident = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(8)
        name = body["model"]
        if body.get("stream"):
            usage = (body.get("stream_options") or {}).get("include_usage")
            resp.content_type = SSE_TYPE
            resp.stream = self._events(ident, name, reply, bool(usage))
            return
        gevent.sleep(self._per_token() * reply.eval_count)
        if self.chat:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(reply.content) or None,
            }
            if reply.thinking:
                message["reasoning_content"] = "".join(reply.thinking)
            if reply.tool_calls:
                message["tool_calls"] = _calls(reply)
            choice: dict[str, Any] = {"index": 0, "message": message}
        else:
            choice = {"index": 0, "text": "".join(reply.content)}
        choice["finish_reason"] = _finish(reply)
        resp.content_type = JSON_TYPE
        resp.data = dumps(
            {
                "id": ident,
                "object": "chat.completion" if self.chat else "text_completion",
                "created": int(time.time()),
                "model": name,
                "choices": [choice],
                "usage": _usage(reply),
            }
        )

    def _per_token(self) -> float:
        return 1.0 / self.state.tps if self.state.tps > 0 else 0.0

    def _events(
        self, ident: str, name: str, reply: sm.Reply, usage: bool
    ) -> Iterator[bytes]:
        per_token = self._per_token()
        created = int(time.time())
        kind = "chat.completion.chunk" if self.chat else "text_completion"

        def event(choice: dict[str, Any] | None, **extra: Any) -> bytes:
            chunk = {"id": ident, "object": kind, "created": created, "model": name}
            chunk["choices"] = [{"index": 0, **choice}] if choice else []
            chunk.update(extra)
            return b"data: " + dumps(chunk) + b"\n\n"

        def piece(text: str, field: str = "content") -> dict[str, Any]:
            if self.chat:
                return {"delta": {field: text}, "finish_reason": None}
            return {"text": text, "finish_reason": None}

        if self.chat:
            yield event({"delta": {"role": "assistant", "content": ""}})
        for token in reply.thinking:
            gevent.sleep(per_token)
            yield event(piece(token, "reasoning_content"))
        for token in reply.content:
            gevent.sleep(per_token)
            yield event(piece(token))
        for k, call in enumerate(_calls(reply)):
            # Arguments in two fragments, as real servers stream them.
            args = call["function"]["arguments"]
            half = len(args) // 2
            first = {**call, "index": k}
            first["function"] = {
                "name": call["function"]["name"],
                "arguments": args[:half],
            }
            rest = {"index": k, "function": {"arguments": args[half:]}}
            yield event({"delta": {"tool_calls": [first]}, "finish_reason": None})
            yield event({"delta": {"tool_calls": [rest]}, "finish_reason": None})
        end = {"delta": {}} if self.chat else {"text": ""}
        yield event({**end, "finish_reason": _finish(reply)})
        if usage:
            yield event(None, usage=_usage(reply))
        yield b"data: [DONE]\n\n"


class Embeddings(Face):
    """POST /v1/embeddings."""

    def on_post(self, req: Any, resp: Any) -> None:
        body = self.body(req)
        model = self.model(body.get("model"))
        data = body.get("input")
        items = [data] if isinstance(data, str) else data
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise OpenAIError(
                400, "input must be a string or a list of strings", "input"
            )
        dims = body.get("dimensions")
        vectors = [sm.embedding(s, model.name, dims) for s in items]
        tokens = sum(sm.count_tokens(s) + 2 for s in items)
        resp.content_type = JSON_TYPE
        resp.data = dumps(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "embedding": v, "index": i}
                    for i, v in enumerate(vectors)
                ],
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


class Images(Face):
    """POST /v1/images/generations: a deterministic PNG per request."""

    def on_post(self, req: Any, resp: Any) -> None:
        body = self.body(req)
        model = self.model(body.get("model"), "image")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise OpenAIError(400, "prompt is required", "prompt")
        if body.get("response_format", "b64_json") != "b64_json":
            raise OpenAIError(400, "only b64_json is supported", "response_format")
        size = str(body.get("size") or "256x256")
        if size == "auto":
            size = "256x256"
        try:
            width, height = (int(v) for v in size.split("x"))
        except ValueError:
            raise OpenAIError(400, f"bad size {size!r}", "size") from None
        if not (0 < width <= SIDE_MAX and 0 < height <= SIDE_MAX):
            raise OpenAIError(400, f"bad size {size!r}", "size")
        n = body.get("n") or 1
        steps = body.get("steps") or 4
        seed = body.get("seed")
        negative = body.get("negative_prompt") or ""
        if self.state.tps > 0:
            gevent.sleep(min(2.0, steps / self.state.tps))
        images = []
        for i in range(int(n)):
            key = f"{model.name}|{prompt}|{negative}|{width}x{height}|{seed}|{i}"
            images.append(render(width, height, key))
        resp.content_type = JSON_TYPE
        resp.data = dumps(
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(p).decode()} for p in images],
            }
        )


class Audio(Face):
    """POST /v1/audio/transcriptions and /translations (multipart)."""

    def __init__(self, state: SimState, token: str | None, translate: bool):
        super().__init__(state, token)
        self.translate = translate

    def on_post(self, req: Any, resp: Any) -> None:
        self.auth(req)
        try:
            boundary = mp.boundary_of(req.content_type)
            stream = req.stream if req.content_length is None else req.bounded_stream
            reader = mp.MultipartReader(stream.read, boundary)
            fields: dict[str, str] = {}
            digest, size = hashlib.sha256(), 0
            for part, chunks in reader.parts():
                if part.name == "file":
                    for chunk in chunks:
                        digest.update(chunk)
                        size += len(chunk)
                else:
                    fields[part.name] = mp.read_text(chunks, part.name)
        except mp.MultipartError as ex:
            raise OpenAIError(400, str(ex)) from ex
        if not size:
            raise OpenAIError(400, "file is required", "file")
        model = self.model(fields.get("model"), "transcribe")
        seconds = round(size / 32000.0, 3)  # 16 kHz 16-bit mono
        text = f"audio {digest.hexdigest()[:16]} {size} bytes"
        if self.translate:
            text = "(en) " + text
        language = "en" if self.translate else fields.get("language") or "en"
        fmt = fields.get("response_format") or "json"
        self.state.touch(model, None)
        _answer(resp, fmt, text, language, seconds)


def _stamp(seconds: float, comma: bool) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3600000)
    m, rest = divmod(rest, 60000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{',' if comma else '.'}{ms:03d}"


def _answer(resp: Any, fmt: str, text: str, language: str, seconds: float) -> None:
    if fmt == "text":
        resp.content_type = "text/plain; charset=utf-8"
        resp.data = text.encode() + b"\n"
    elif fmt == "srt":
        resp.content_type = "text/plain; charset=utf-8"
        resp.data = (
            f"1\n{_stamp(0, True)} --> {_stamp(seconds, True)}\n{text}\n\n".encode()
        )
    elif fmt == "vtt":
        resp.content_type = "text/vtt; charset=utf-8"
        resp.data = (
            f"WEBVTT\n\n{_stamp(0, False)} --> {_stamp(seconds, False)}\n{text}\n\n"
        ).encode()
    elif fmt == "verbose_json":
        resp.content_type = JSON_TYPE
        resp.data = dumps(
            {
                "task": "transcribe",
                "language": language,
                "duration": seconds,
                "text": text,
                "segments": [{"id": 0, "start": 0.0, "end": seconds, "text": text}],
            }
        )
    elif fmt == "json":
        resp.content_type = JSON_TYPE
        resp.data = dumps({"text": text})
    else:
        raise OpenAIError(400, f"unknown response_format {fmt!r}", "response_format")


class Listing(Face):
    """GET /v1/models and /health."""

    def on_get_models(self, req: Any, resp: Any) -> None:
        self.auth(req)
        resp.content_type = JSON_TYPE
        resp.data = dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": listed_id(m.name),
                        "object": "model",
                        "created": 1764000000,
                        "owned_by": "herd-sim",
                    }
                    for m in self.state.models.values()
                ],
            }
        )

    def on_get_health(self, req: Any, resp: Any) -> None:
        self.auth(req)
        resp.content_type = JSON_TYPE
        resp.data = b'{"status":"ok"}'


def add_media_routes(app: falcon.App, state: SimState, token: str | None) -> None:
    """Image and audio routes (on both faces)."""
    app.add_route("/v1/images/generations", Images(state, token))
    app.add_route("/v1/audio/transcriptions", Audio(state, token, translate=False))
    app.add_route("/v1/audio/translations", Audio(state, token, translate=True))


def add_routes(app: falcon.App, state: SimState, token: str | None) -> None:
    """The OpenAI face's routes."""
    app.add_error_handler(OpenAIError, handle_error)
    app.add_error_handler(SimError, _sim_error)
    listing = Listing(state, token)
    app.add_route("/v1/models", listing, suffix="models")
    app.add_route("/health", listing, suffix="health")
    app.add_route("/v1/chat/completions", Completions(state, token, chat=True))
    app.add_route("/v1/completions", Completions(state, token, chat=False))
    app.add_route("/v1/embeddings", Embeddings(state, token))
    add_media_routes(app, state, token)


def _sim_error(req: Any, resp: Any, ex: SimError, params: Any) -> None:
    handle_error(req, resp, OpenAIError(ex.status, ex.message), params)
