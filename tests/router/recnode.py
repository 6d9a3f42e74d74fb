"""A recording Ollama node for enforcement tests, and a model of how Ollama reads JSON.

`RecordingNode` is a real HTTP server on loopback (a thread of the test
process) that answers the Ollama routes a router forwards to and keeps every
request body exactly as it arrived. `go_view` reads such a body the way
Ollama's Go code does (encoding/json into its request structs), so a test can
assert what the node would actually run, not what Python's `json` sees:

- top-level keys match fields case-insensitively with Go's folding
  (`unicode.ToUpper(unicode.ToLower(r))` rune by rune: `Model`, `MODEL`,
  `ſtream` and `\\u212aeep_alive` all reach a field);
- a field given twice: the last one wins, and two objects (`options`) merge;
- inside a map (`options`, `format`...) keys are exact; the last one wins;
- NaN, Infinity and numbers beyond float64 are errors (400 from the node).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODELS = ("llama3.2:3b", "qwen3:0.6b", "nomic-embed-text:latest", "llava:7b")


def _simple_lower(c: str) -> str:
    low = c.lower()
    return low if len(low) == 1 else ("i" if c == "\u0130" else c)


def _simple_upper(c: str) -> str:
    up = c.upper()
    return up if len(up) == 1 else c


def go_fold(key: str) -> str:
    """Go's case folding of a JSON key (encoding/json `foldName`)."""
    return "".join(
        c.upper() if c.isascii() else _simple_upper(_simple_lower(c)) for c in key
    )


class NotGoJSON(ValueError):
    """The body is not JSON Go's decoder accepts."""


def _no_constant(name: str) -> Any:
    raise NotGoJSON(f"invalid character in numeric literal: {name}")


def _finite(text: str) -> float:
    value = float(text)
    if abs(value) == float("inf"):
        raise NotGoJSON(f"number {text[:20]} out of range")
    return value


def go_view(raw: bytes) -> dict[str, Any]:
    """The top-level fields of a request body as Ollama decodes it, keyed by
    lowercase field name."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as ex:
        raise NotGoJSON("not UTF-8") from ex
    pairs = json.loads(
        text,
        object_pairs_hook=_top_level_marker,
        parse_constant=_no_constant,
        parse_float=_finite,
        parse_int=lambda s: int(_finite(s)) if len(s) > 300 else int(s),
    )
    if not isinstance(pairs, _Pairs):
        raise NotGoJSON("body is not an object")
    out: dict[str, Any] = {}
    for key, value in pairs.items:
        field = go_fold(key).lower()
        old = out.get(field)
        if isinstance(old, dict) and isinstance(value, dict):
            out[field] = {**old, **value}  # Go decodes into the existing map
        else:
            out[field] = value
    return out


class _Pairs:
    """An object as its ordered (key, value) pairs (duplicates kept)."""

    def __init__(self, items: list[tuple[str, Any]]):
        self.items = items


def _top_level_marker(items: list[tuple[str, Any]]) -> Any:
    # Every object is first kept as pairs; nested ones become dicts (maps:
    # exact keys, last wins) when their parent is built.
    return _Pairs([(k, _as_map(v)) for k, v in items])


def _as_map(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return {k: v for k, v in value.items}
    if isinstance(value, list):
        return [_as_map(v) for v in value]
    return value


class RecordingNode:
    """An Ollama-compatible node on 127.0.0.1 that records request bodies."""

    def __init__(self, models: tuple[str, ...] = MODELS):
        self.models = models
        self.received: list[tuple[str, bytes]] = []
        #: When set, every POST is answered 200 with these bytes (a bad node).
        self.canned: bytes | None = None
        self.lock = threading.Lock()
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per answer (flushed after each request), no Nagle:
            # split small writes would wait for delayed ACKs.
            wbufsize = -1
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                node.answer_get(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with node.lock:
                    node.received.append((self.path, raw))
                node.answer_post(self, raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.name = "rec"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self) -> list[tuple[str, bytes]]:
        """The (path, body) pairs received since the last call."""
        with self.lock:
            got, self.received = self.received, []
        return got

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- answers -------------------------------------------------------------

    def answer_get(self, h: BaseHTTPRequestHandler) -> None:
        if h.path == "/api/version":
            _send(h, 200, {"version": "0.12.0"})
        elif h.path == "/api/tags":
            tags = [
                {"name": m, "model": m, "size": 1, "digest": "0" * 64, "details": {}}
                for m in self.models
            ]
            _send(h, 200, {"models": tags})
        elif h.path == "/api/ps":
            _send(h, 200, {"models": []})
        else:
            _send(h, 404, {"error": "not found"})

    def answer_post(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if self.canned is not None:
            _send(h, 200, self.canned, "application/x-ndjson")
            return
        try:
            body = go_view(raw)
        except (ValueError, NotGoJSON) as ex:
            _send(h, 400, {"error": str(ex)})
            return
        model = body.get("model") or body.get("name") or ""
        done = {
            "model": model,
            "created_at": "2026-01-01T00:00:00Z",
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 1,
            "eval_count": 1,
        }
        if h.path in ("/api/chat", "/api/generate"):
            chat = h.path == "/api/chat"
            piece = {"message": {"role": "assistant", "content": "ok"}}
            if not chat:
                piece = {"response": "ok"}
            if body.get("stream") is False:
                _send(h, 200, {**done, **piece})
                return
            first = {"model": model, "done": False, **piece}
            last = {**done, **({"message": {"role": "assistant", "content": ""}})}
            if not chat:
                last = {**done, "response": ""}
            lines = json.dumps(first) + "\n" + json.dumps(last) + "\n"
            _send(h, 200, lines.encode(), "application/x-ndjson")
        elif h.path == "/api/embed":
            _send(h, 200, {"model": model, "embeddings": [[0.5, 0.25]], **done})
        elif h.path == "/api/embeddings":
            _send(h, 200, {"embedding": [0.5, 0.25]})
        elif h.path == "/api/show":
            _send(h, 200, {"modelfile": "", "details": {}, "model_info": {}})
        else:
            _send(h, 404, {"error": "not found"})


class RecordingOpenAINode(RecordingNode):
    """The same recorder speaking the OpenAI API (a manifest's `api: openai`
    node), answering without streaming: it gets the client's body as sent."""

    def answer_get(self, h: BaseHTTPRequestHandler) -> None:
        if h.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "owned_by": "rec"} for m in self.models
            ]
            _send(h, 200, {"object": "list", "data": data})
        else:
            _send(h, 404, {"error": {"message": "not found"}})

    def answer_post(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        model = go_view(raw).get("model", "")
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        if h.path == "/v1/embeddings":
            item = {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}
            _send(h, 200, {"object": "list", "data": [item], "model": model})
            return
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "text": "ok"}
        kind = "text_completion"
        if h.path == "/v1/chat/completions":
            choice = {**choice, "message": {"role": "assistant", "content": "ok"}}
            del choice["text"]
            kind = "chat.completion"
        reply = {"id": "r", "object": kind, "created": 0, "model": model}
        _send(h, 200, {**reply, "choices": [choice], "usage": usage})


def _send(
    h: BaseHTTPRequestHandler,
    status: int,
    body: Any,
    content_type: str = "application/json; charset=utf-8",
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def app_over(
    node: RecordingNode,
    allowed: list[str] | None = None,
    pinned: tuple[str, ...] = (),
) -> Any:
    """The router app in-process (falcon TestClient) with `node` as its only
    node; `pinned` models have `keep_loaded: true`."""
    from falcon import testing

    from herd.manifest.model import build_fleet
    from herd.router.app import create_app
    from herd.router.observe.traces import TraceLog
    from herd.router.reload import StaticSource
    from herd.router.routing.proxy import Upstream

    client: dict[str, Any] = {"name": "local", "networks": ["127.0.0.0/8"]}
    if allowed:
        client["models"] = allowed
    fleet = build_fleet(
        {
            "metadata": {"name": "bodies"},
            "router": {"clients": [client], "limits": {"retries": 0}},
            "nodes": [{"name": "rec", "url": node.url}],
            "models": [
                {"name": m, **({"keep_loaded": True} if m in pinned else {})}
                for m in MODELS
            ],
        }
    )
    app = create_app(StaticSource(fleet), TraceLog(None), Upstream(), background=False)
    return testing.TestClient(app, headers={"Host": "localhost"})
