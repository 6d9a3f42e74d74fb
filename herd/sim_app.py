"""The HTTP surface of `herd sim`: a Falcon app that speaks Ollama's native API.

`create_app(state)` returns the WSGI app; `herd.sim.run` serves it with gevent.
Errors are `{"error": ...}` with Ollama's statuses; streams are NDJSON, one
object per line, no blank lines (shared reference §1.1). Fault modes are applied
by one middleware, before the resource runs (slow, hang, error, garbage) or
around its output (cut-mid-stream).
"""

from __future__ import annotations

import base64
import binascii
import errno
import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

import falcon
import gevent

from herd import sim_models as sm
from herd.sim import VERSION, Fault, SimError, SimState, parse_keep_alive

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
GARBAGE = b"\x00\xff<html><body>502 Bad Gateway</body></html>\xfe\n{not json\n"
HANG_S = 3600.0
_THINK = (True, False, "low", "medium", "high", "max")


def created_at() -> str:
    """RFC 3339 UTC with nanoseconds, like Go's time.Time."""
    ns = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9))
    return f"{stamp}.{ns % 10**9:09d}Z"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _drop(reason: str) -> ConnectionResetError:
    # pywsgi closes the socket quietly on ECONNRESET: the client sees a cut body.
    return ConnectionResetError(errno.ECONNRESET, reason)


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


class Faults:
    """Middleware: counts requests and applies the node's current fault."""

    def __init__(self, state: SimState):
        self.state = state

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.cut = None
        if req.path.startswith("/_sim/"):
            return
        self.state.requests[req.path] += 1
        self.state.active += 1
        fault = self.state.take_fault(req.path)
        if fault is None:
            return
        if fault.mode == "slow":
            gevent.sleep(fault.delay_s)
        elif fault.mode == "hang":
            resp.stream = _hang(max(fault.delay_s, HANG_S))
            resp.complete = True
        elif fault.mode == "error":
            resp.status = 500
            resp.content_type = JSON_TYPE
            resp.data = dumps({"error": "simulated failure (herd sim fault 'error')"})
            resp.complete = True
        elif fault.mode == "garbage":
            resp.content_type = JSON_TYPE
            resp.data = GARBAGE
            resp.complete = True
        elif fault.mode == "cut-mid-stream":
            req.context.cut = fault

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, ok: bool
    ) -> None:
        if req.path.startswith("/_sim/"):
            return
        fault: Fault | None = req.context.cut
        if fault is not None:
            if resp.stream is None:
                data = resp.data or b""
                resp.content_length = len(data)
                resp.data = None
                resp.stream = _cut_body(data)
            else:
                resp.stream = _cut_stream(resp.stream, fault.after_chunks)
        if resp.stream is None:
            self.state.active -= 1
        else:
            resp.stream = self._count(resp.stream)

    def _count(self, stream: Any) -> Iterator[bytes]:
        try:
            yield from stream
        finally:
            self.state.active -= 1


def _hang(seconds: float) -> Iterator[bytes]:
    gevent.sleep(seconds)
    raise _drop("herd sim fault 'hang'")
    yield b""  # pragma: no cover - makes this a generator


def _cut_body(data: bytes) -> Iterator[bytes]:
    yield data[: len(data) // 2]
    raise _drop("herd sim fault 'cut-mid-stream'")


def _cut_stream(stream: Any, after: int) -> Iterator[bytes]:
    for sent, chunk in enumerate(stream):
        if sent >= after:
            raise _drop("herd sim fault 'cut-mid-stream'")
        yield chunk
    raise _drop("herd sim fault 'cut-mid-stream'")


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
            eval_ns = int(reply.eval_count * (per_token or 1e-4) * 1e9)
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
            tools=body.get("tools") or (),
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
            model, text, options=options, think=think, fmt=fmt,
            tokens=self.state.tokens, salt=self.state.seed,
        )  # fmt: skip

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


class Listing:
    """GET/HEAD /api/tags, GET /api/ps, POST /api/show, GET/HEAD /api/version and /."""

    def __init__(self, state: SimState):
        self.state = state

    def on_get_tags(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = JSON_TYPE
        resp.data = dumps({"models": [m.tag() for m in self.state.models.values()]})

    on_head_tags = on_get_tags

    def on_get_ps(self, req: falcon.Request, resp: falcon.Response) -> None:
        now = time.time()
        live = sorted(
            ((exp, name) for name, exp in self.state.loaded.items() if exp > now),
            reverse=True,
        )
        models = []
        for expires, name in live:
            model = self.state.models[sm.normalize(name)]
            models.append({
                "name": model.name, "model": model.name, "size": model.size,
                "digest": model.digest, "details": model.details(),
                "expires_at": _rfc3339(min(expires, 4e9)), "size_vram": model.size,
                "context_length": 4096,
            })  # fmt: skip
        resp.content_type = JSON_TYPE
        resp.data = dumps({"models": models})

    def on_post_show(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req)
        name = body.get("model") or body.get("name")
        model = self.state.model(name, "/api/show")
        resp.content_type = JSON_TYPE
        resp.data = dumps(model.show())

    def on_get_version(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = JSON_TYPE
        resp.data = dumps({"version": VERSION})

    on_head_version = on_get_version

    def on_get_root(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/plain; charset=utf-8"
        resp.data = b"Ollama is running"

    on_head_root = on_get_root


def _rfc3339(epoch: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{stamp}.{int(epoch % 1 * 1e9):09d}Z"


class Control:
    """Loopback-only /_sim/fault and /_sim/stats."""

    def __init__(self, state: SimState):
        self.state = state

    def _local(self, req: falcon.Request) -> None:
        try:
            loopback = ipaddress.ip_address(req.remote_addr).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SimError(403, "the /_sim control routes answer loopback only")

    def on_get_fault(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._local(req)
        resp.content_type = JSON_TYPE
        resp.data = dumps(self.state.fault_doc())

    def on_post_fault(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._local(req)
        self.state.fault = Fault.parse(read_body(req))
        self.on_get_fault(req, resp)

    def on_get_stats(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._local(req)
        resp.content_type = JSON_TYPE
        resp.data = dumps(self.state.stats())

    def on_delete_stats(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._local(req)
        self.state.requests.clear()
        self.state.by_model.clear()
        self.on_get_stats(req, resp)


def _error(
    req: falcon.Request, resp: falcon.Response, ex: SimError, params: Any
) -> None:
    resp.status = ex.status
    resp.content_type = JSON_TYPE
    resp.data = dumps({"error": ex.message})


def _not_found(req: falcon.Request, resp: falcon.Response, **kwargs: Any) -> None:
    # gin's plain-text 404, as a real node answers unknown paths.
    resp.status = 404
    resp.content_type = "text/plain"
    resp.data = b"404 page not found"


def create_app(state: SimState) -> falcon.App:
    """The sim node's WSGI app over `state` (shared by every request)."""
    app = falcon.App(middleware=[Faults(state)], cors_enable=False)
    app.add_error_handler(SimError, _error)
    listing, control = Listing(state), Control(state)
    app.add_route("/", listing, suffix="root")
    app.add_route("/api/version", listing, suffix="version")
    app.add_route("/api/tags", listing, suffix="tags")
    app.add_route("/api/ps", listing, suffix="ps")
    app.add_route("/api/show", listing, suffix="show")
    app.add_route("/api/chat", Chat(state))
    app.add_route("/api/generate", Generate(state))
    app.add_route("/api/embed", Embed(state))
    app.add_route("/api/embeddings", Embeddings(state))
    app.add_route("/_sim/fault", control, suffix="fault")
    app.add_route("/_sim/stats", control, suffix="stats")
    app.add_sink(_not_found, prefix="/")
    return app
