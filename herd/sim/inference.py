"""The inference routes of `herd sim`: /api/chat, /api/generate, /api/embed(dings).

Requests are checked the way Ollama checks them (same statuses and messages,
shared reference §1.1-§1.4); replies come from herd.sim.models and stream as
NDJSON at the node's tokens/s, one object per line.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterator
from typing import Any

import falcon
import gevent

from herd.sim import SimError, SimState, parse_keep_alive
from herd.sim import models as sm

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
_THINK = (True, False, "low", "medium", "high", "max")


def created_at() -> str:
    """RFC 3339 UTC with nanoseconds, like Go's time.Time."""
    ns = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9))
    return f"{stamp}.{ns % 10**9:09d}Z"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def read_body(req: falcon.Request) -> dict[str, Any]:
    raw = req.bounded_stream.read()
    if not raw.strip():
        raise SimError(400, "missing request body")
    try:
        body = json.loads(raw)
    except ValueError as ex:
        raise SimError(400, f"invalid character in request body: {ex}") from ex
    if not isinstance(body, dict):
        raise SimError(400, "json: cannot unmarshal request body into an object")
    return body


def check_images(images: Any) -> None:
    if images is None:
        return
    if not isinstance(images, list):
        raise SimError(400, "json: cannot unmarshal images into []api.ImageData")
    for image in images:
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError, TypeError) as ex:
            raise SimError(400, f"illegal base64 data in images: {ex}") from ex


def check_think(value: Any, model: sm.SimModel) -> Any:
    if value is not None and (isinstance(value, list | dict) or value not in _THINK):
        raise SimError(400, f"invalid think value: {json.dumps(value)}")
    if value is None:
        return True if model.thinking else None
    if value and not model.thinking:
        raise SimError(400, f'"{model.name}" does not support thinking')
    return value


def check_format(fmt: Any) -> Any:
    if fmt in (None, "", "json") or isinstance(fmt, dict):
        return fmt or None
    raise SimError(
        400,
        f'invalid format: {json.dumps(fmt)}; expected "json" or a valid JSON '
        "Schema object",
    )


def check_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise SimError(400, "json: cannot unmarshal options into map[string]any")
    return options


class Inference:
    """Shared machinery of /api/chat and /api/generate: timing and streaming."""

    def __init__(self, state: SimState):
        self.state = state

    def respond(
        self,
        resp: falcon.Response,
        body: dict[str, Any],
        reply: sm.Reply,
        frame: Any,
        load_s: float,
    ) -> None:
        """Stream `reply` (NDJSON) or send its final object, at the node's speed."""
        started = time.perf_counter_ns()
        per_token = 1.0 / self.state.tps if self.state.tps > 0 else 0.0
        model = body["model"]

        def final(**fields: Any) -> dict[str, Any]:
            eval_ns = round(reply.eval_count * (per_token or 1e-4) * 1e9)
            return {
                **frame(model, done=True, **fields),
                "done_reason": reply.done_reason,
                "total_duration": time.perf_counter_ns() - started + int(load_s * 1e9),
                "load_duration": int(load_s * 1e9),
                "prompt_eval_count": reply.prompt_tokens,
                "prompt_eval_duration": reply.prompt_tokens * 120_000,
                "eval_count": reply.eval_count,
                "eval_duration": eval_ns,
            }

        if body.get("stream") is False:
            if per_token:
                gevent.sleep(per_token * reply.eval_count)
            resp.content_type = JSON_TYPE
            resp.data = dumps(
                final(
                    content="".join(reply.content),
                    thinking="".join(reply.thinking),
                    tool_calls=list(reply.tool_calls),
                )
            )
            return

        def lines() -> Iterator[bytes]:
            for token in reply.thinking:
                gevent.sleep(per_token)
                yield dumps(frame(model, thinking=token)) + b"\n"
            for token in reply.content:
                gevent.sleep(per_token)
                yield dumps(frame(model, content=token)) + b"\n"
            if reply.tool_calls:
                gevent.sleep(per_token)
                yield dumps(frame(model, tool_calls=list(reply.tool_calls))) + b"\n"
            yield dumps(final()) + b"\n"

        resp.content_type = NDJSON_TYPE
        resp.stream = lines()

    def early(self, resp: falcon.Response, body: dict[str, Any], frame: Any) -> None:
        """Empty prompt/messages: Ollama only loads (or unloads) the model."""
        unload = parse_keep_alive(body.get("keep_alive")) == 0
        done = {**frame(body["model"], done=True)}
        done["done_reason"] = "unload" if unload else "load"
        resp.content_type = JSON_TYPE if body.get("stream") is False else NDJSON_TYPE
        resp.data = dumps(done) + (b"" if body.get("stream") is False else b"\n")


def chat_frame(model: str, done: bool = False, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": fields.get("content", ""),
    }
    if fields.get("thinking"):
        message["thinking"] = fields["thinking"]
    if fields.get("tool_calls"):
        message["tool_calls"] = fields["tool_calls"]
    return {
        "model": model,
        "created_at": created_at(),
        "message": message,
        "done": done,
    }


def generate_frame(model: str, done: bool = False, **fields: Any) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "model": model,
        "created_at": created_at(),
        "response": fields.get("content", ""),
    }
    if fields.get("thinking"):
        chunk["thinking"] = fields["thinking"]
    chunk["done"] = done
    return chunk


class Chat(Inference):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req)
        model = self.state.model(body.get("model"), "/api/chat")
        if model.embedding:
            raise SimError(400, f'"{model.name}" does not support chat')
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) for m in messages
        ):
            raise SimError(400, "json: cannot unmarshal messages into []api.Message")
        for message in messages:
            check_images(message.get("images"))
        think = check_think(body.get("think"), model)
        fmt = check_format(body.get("format"))
        options = check_options(body.get("options"))
        tools = body.get("tools") or []
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise SimError(400, "json: cannot unmarshal tools into []api.Tool")
        load_s = self.state.touch(model, body.get("keep_alive"))
        self.state.by_model[model.name] += 1
        if not messages:
            return self.early(resp, body, chat_frame)
        prompt = "\n".join(
            f"{m.get('role', '')}: {m.get('content') or ''}" for m in messages
        )
        reply = sm.compose(
            model,
            prompt,
            options=options,
            think=think,
            fmt=fmt,
            tools=tools,
            tool_turn=str(messages[-1].get("role", "")).lower() == "user",
            tokens=self.state.tokens,
            salt=self.state.seed,
        )
        self.respond(resp, body, reply, chat_frame, load_s)


class Generate(Inference):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req)
        model = self.state.model(body.get("model"), "/api/generate")
        if model.embedding:
            raise SimError(400, f'"{model.name}" does not support generate')
        if body.get("raw") and any(
            body.get(k) for k in ("template", "system", "context")
        ):
            raise SimError(
                400, "raw mode does not support template, system, or context"
            )
        check_images(body.get("images"))
        think = check_think(body.get("think"), model)
        fmt = check_format(body.get("format"))
        options = check_options(body.get("options"))
        load_s = self.state.touch(model, body.get("keep_alive"))
        self.state.by_model[model.name] += 1
        prompt = body.get("prompt") or ""
        if not prompt:
            return self.early(resp, body, generate_frame)
        text = f"{body.get('system') or ''}\n{prompt}\n{body.get('suffix') or ''}"
        reply = sm.compose(
            model,
            text,
            options=options,
            think=think,
            fmt=fmt,
            tokens=self.state.tokens,
            salt=self.state.seed,
        )

        def frame(name: str, done: bool = False, **fields: Any) -> dict[str, Any]:
            chunk = generate_frame(name, done, **fields)
            if done and not body.get("raw"):
                chunk["context"] = [len(t) for t in reply.content][:64] or [0]
            return chunk

        self.respond(resp, body, reply, frame, load_s)


class Embed:
    def __init__(self, state: SimState):
        self.state = state

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req)
        model = self.state.model(body.get("model"), "/api/embed")
        data = body.get("input")
        if isinstance(data, str):
            data = [data]
        if data is None:
            data = []
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise SimError(400, "invalid input type")
        dims = body.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or dims < 0):
            raise SimError(400, "dimensions must be a positive integer")
        load_s = self.state.touch(model, body.get("keep_alive"))
        self.state.by_model[model.name] += 1
        reply: dict[str, Any] = {"model": body["model"], "embeddings": []}
        if data:
            reply["embeddings"] = [sm.embedding(s, model.name, dims) for s in data]
            reply["total_duration"] = int(load_s * 1e9) + 2_000_000 * len(data)
            reply["load_duration"] = int(load_s * 1e9)
            reply["prompt_eval_count"] = sum(sm.count_tokens(s) + 2 for s in data)
        resp.content_type = JSON_TYPE
        resp.data = dumps(reply)


class Embeddings:
    def __init__(self, state: SimState):
        self.state = state

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req)
        model = self.state.model(body.get("model"), "/api/embeddings")
        prompt = body.get("prompt") or ""
        self.state.touch(model, body.get("keep_alive"))
        self.state.by_model[model.name] += 1
        # The legacy route returns raw (not normalised) float64 values.
        vector = [v * 7.5 for v in sm.embedding(prompt, model.name)] if prompt else []
        resp.content_type = JSON_TYPE
        resp.data = dumps({"embedding": vector})
