"""The OpenAI API (/v1/*), converted to and from the nodes' native API.

Conversion is herd.router.convert's job (pure functions); these resources
parse, enforce, forward and relay. Streams are Server-Sent Events ending in
`data: [DONE]`; errors are OpenAI-shaped (see herd.router.api.failures).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import falcon

from herd.errors import InvalidRequest, ModelNotFound
from herd.manifest.model import Fleet, Model
from herd.router import convert
from herd.router.api.body import check_lowercase_keys
from herd.router.api.kinds import check_kind
from herd.router.api.ollama import (
    THINKING_PATHS,
    allowed_models,
    listed_names,
    think_budget,
)
from herd.router.gate import decision_headers
from herd.router.observe import tags
from herd.router.routing import relay
from herd.router.routing.forward import Opened, Outcome, dumps
from herd.router.routing.openaileg import OpenAIForm
from herd.router.runtime import Runtime


class Forwarded:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses."""

    def __init__(
        self,
        runtime: Runtime,
        route: str,
        native_path: str,
        to_native: Callable[[Any], convert.Converted],
        reply: Callable[[dict[str, Any], convert.Converted], dict[str, Any]],
        stream_type: Any = None,
        passthrough: bool = True,
    ):
        self.rt = runtime
        self.route = route
        self.native_path = native_path
        self.to_native = to_native
        self.reply = reply
        self.stream_type = stream_type
        #: An OpenAI node gets the client's body as is (else, like an Ollama
        #: node, the native conversion, turned into OpenAI chat for it).
        self.passthrough = passthrough

    def on_post(self, req: Any, resp: Any) -> None:
        rt = self.rt
        ctx = req.context
        fleet = ctx.served.fleet
        outcome: Outcome = ctx.outcome
        outcome.route = self.route
        body, _ = rt.read_json(req, fleet)
        if self.passthrough:
            # An OpenAI node may get this body as sent, and may match fields
            # without regard to case (Go's encoding/json): `"Stream": true`
            # would stream to a router that read no `stream`.
            check_lowercase_keys(body)
        if isinstance(body.get("model"), str):
            outcome.requested_model = body["model"]
        if "metadata" in body or "user" in body:
            ctx.tags = tags.merged(getattr(ctx, "tags", ()), tags.from_openai(body))
            outcome.tags = tags.joined(ctx.tags)
        extra = body.pop("fallback_models", None)
        try:
            converted, refused = self.to_native(body), None
        except InvalidRequest as ex:
            # Only an Ollama node needs the conversion: OpenAI nodes get the
            # body as sent, so a field Ollama cannot carry is refused only
            # when such a node might serve the request.
            converted, refused = None, ex
        requested = converted.model if converted else body.get("model")
        models = rt.models_for(fleet, ctx.client, requested, extra)
        check_kind(self.route, models[0])
        if refused is not None and not (
            self.passthrough and openai_only(fleet, models)
        ):
            raise refused
        rt.limiter.take(ctx.client)
        wants_stream = body.get("stream") is True
        stream = bool(wants_stream and self.stream_type)
        native: dict[str, Any] = {}
        if converted is not None:
            native = dict(converted.native)
            stream = bool(converted.stream and self.stream_type)
        if self.stream_type is not None:
            native["stream"] = stream
        if self.native_path in THINKING_PATHS:
            think_budget(rt, fleet, models, native, resp)
        opened = rt.forwarder.open(
            fleet,
            self.native_path,
            native,
            models,
            stream=stream,
            outcome=outcome,
            openai=OpenAIForm(self.route, body) if self.passthrough else None,
        )
        decision_headers(resp, outcome, req)
        ctx.deferred = True
        if opened.passthrough:
            self._passthrough(opened, resp, outcome, fleet)
            return
        assert converted is not None
        if opened.body is None:
            outcome.status = 200
            resp.content_type = convert.SSE_CONTENT_TYPE
            resp.set_header("Cache-Control", "no-cache")
            converter = self.stream_type(
                converted.model, converted.include_usage, request=converted
            )
            resp.stream = relay.sse(
                opened, converter, outcome, rt.finish, rt.deadline(fleet), rt.monotonic
            )
            return
        resp.content_type = falcon.MEDIA_JSON
        resp.status = opened.status
        outcome.status = opened.status
        error = None if opened.status == 200 else "node_status"
        try:
            if error is None and opened.first_obj is not None:
                outcome.counts(opened.first_obj)
                resp.data = dumps(self.reply(opened.first_obj, converted))
            else:
                body = opened.body or b""
                resp.data = dumps(convert.error_from_native(opened.status, body))
        except Exception:
            outcome.status, error = 502, "bad_node_answer"
            raise
        finally:
            rt.finish(opened, outcome, error)

    def _passthrough(
        self, opened: Opened, resp: Any, outcome: Outcome, fleet: Fleet
    ) -> None:
        """An OpenAI node's own answer, relayed as it came."""
        rt = self.rt
        if opened.body is None:
            outcome.status = 200
            resp.content_type = convert.SSE_CONTENT_TYPE
            resp.set_header("Cache-Control", "no-cache")
            resp.stream = relay.sse_passthrough(
                opened, outcome, rt.finish, rt.deadline(fleet), rt.monotonic
            )
            return
        resp.status = opened.status
        outcome.status = opened.status
        resp.content_type = opened.content_type or falcon.MEDIA_JSON
        usage = (opened.first_obj or {}).get("usage")
        if opened.status == 200 and isinstance(usage, dict):
            outcome.tokens_in = usage.get("prompt_tokens")
            outcome.tokens_out = usage.get("completion_tokens")
        resp.data = opened.body
        rt.finish(opened, outcome, None if opened.status < 400 else "node_status")


def openai_only(fleet: Fleet, models: tuple[Model, ...]) -> bool:
    """True when every node that could serve `models` is an OpenAI node."""
    return all(
        node.api == "openai" for model in models for node in fleet.nodes_for(model)
    )


def chat_reply(native: dict[str, Any], c: convert.Converted) -> dict[str, Any]:
    return convert.chat_response(native, c.model, plan=c.plan)


def completion_reply(native: dict[str, Any], c: convert.Converted) -> dict[str, Any]:
    return convert.completion_response(native, c.model)


def embedding_reply(native: dict[str, Any], c: convert.Converted) -> dict[str, Any]:
    return convert.embedding_response(native, c.model, c.encoding_format)


def resources(runtime: Runtime) -> dict[str, Any]:
    """Route -> resource for the OpenAI surface."""
    return {
        "/v1/chat/completions": Forwarded(
            runtime,
            "/v1/chat/completions",
            "/api/chat",
            convert.chat_request,
            chat_reply,
            convert.ChatStream,
        ),
        "/v1/completions": Forwarded(
            runtime,
            "/v1/completions",
            "/api/generate",
            convert.completion_request,
            completion_reply,
            convert.CompletionStream,
        ),
        "/v1/embeddings": Forwarded(
            runtime,
            "/v1/embeddings",
            "/api/embed",
            convert.embedding_request,
            embedding_reply,
        ),
        "/v1/responses": Forwarded(
            runtime,
            "/v1/responses",
            "/api/chat",
            convert.responses_request,
            convert.responses_reply,
            convert.ResponsesStream,
            # Not every OpenAI-compatible server has /v1/responses: an OpenAI
            # node gets the converted request as chat completions instead.
            passthrough=False,
        ),
        "/v1/models": Models(runtime),
        "/v1/models/{model_id}": OneModel(runtime),
    }


def _created(runtime: Runtime, fleet: Fleet, model: Model) -> int:
    """When the model was written on a node (from its /api/tags), else router start."""
    for node in fleet.nodes_for(model):
        stamp = runtime.poller.get(node).details.get(model.name, {}).get("modified_at")
        if isinstance(stamp, str):
            try:
                return int(dt.datetime.fromisoformat(stamp[:19] + "+00:00").timestamp())
            except ValueError:
                continue
    return int(runtime.started_at)


class Models:
    """GET /v1/models: the declared models and aliases this caller may use."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any) -> None:
        fleet = req.context.served.fleet
        entries = []
        for model in allowed_models(fleet, req.context.client):
            created = _created(self.rt, fleet, model)
            entries += [(name, created) for name in listed_names(model)]
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(convert.models_list(entries))

    on_head = on_get


class OneModel:
    """GET /v1/models/{model_id}: one declared model (or alias)."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime

    def on_get(self, req: Any, resp: Any, model_id: str) -> None:
        fleet = req.context.served.fleet
        model = fleet.resolve(model_id)
        if model is None or model not in allowed_models(fleet, req.context.client):
            raise ModelNotFound(f"model '{model_id}' not found")
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(
            convert.model_object(model_id, _created(self.rt, fleet, model))
        )

    on_head = on_get
