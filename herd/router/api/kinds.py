"""Which model kinds each inference route serves (manifest `models[].kind`).

A request whose model is of the wrong kind is refused with a 400 that says
what the model is and which route serves it, before any node is asked: a chat
request to a speech-to-text model, an image request to a chat model.
"""

from __future__ import annotations

from herd.errors import InvalidRequest
from herd.manifest.model import Model

#: Route -> the kinds of model it serves. Embedding routes take chat models
#: too: Ollama embeds with most language models.
ROUTE_KINDS: dict[str, tuple[str, ...]] = {
    "/api/chat": ("chat",),
    "/api/generate": ("chat",),
    "/api/embed": ("embed", "chat"),
    "/api/embeddings": ("embed", "chat"),
    "/v1/chat/completions": ("chat",),
    "/v1/completions": ("chat",),
    "/v1/embeddings": ("embed", "chat"),
    "/v1/responses": ("chat",),
    "/api/generate-image": ("image",),
    "/v1/images/generations": ("image",),
    "/api/transcribe": ("transcribe",),
    "/v1/audio/transcriptions": ("transcribe",),
    "/v1/audio/translations": ("transcribe",),
}
#: Where a client should send a request for a model of each kind.
_ROUTES_FOR = {
    "chat": "/api/chat or /v1/chat/completions",
    "embed": "/api/embed or /v1/embeddings",
    "image": "/api/generate-image or /v1/images/generations",
    "transcribe": "/api/transcribe or /v1/audio/transcriptions",
}


def check_kind(route: str, model: Model) -> None:
    """Refuse (400) a request for `model` on a route that does not serve its kind."""
    kinds = ROUTE_KINDS.get(route)
    if kinds is None or model.kind in kinds:
        return
    raise InvalidRequest(
        f"model '{model.name}' is a{'n' if model.kind == 'image' else ''} "
        f"{model.kind} model: {route} does not serve it "
        f"(use {_ROUTES_FOR[model.kind]})",
        param="model",
    )
