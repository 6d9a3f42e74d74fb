"""OpenAI ⇄ Ollama conversion for the router's /v1 routes: pure functions, no I/O.

Modules: `request` (shared checks, completions, embeddings), `chat` (chat
requests), `response` (replies, errors, SSE framing, models), `stream` (SSE streams),
`toolchoice` (forced tool calls emulated), `responses`, `response_items` and
`responses_stream` (the Responses API).

Public interface (the /v1 resources code against these; all raise
`herd.errors.InvalidRequest` naming the offending field):

    chat_request(body: dict) -> Converted             /v1/chat/completions -> /api/chat
    completion_request(body: dict) -> Converted       /v1/completions -> /api/generate
    embedding_request(body: dict) -> Converted        /v1/embeddings -> /api/embed
    responses_request(body: dict) -> Converted        /v1/responses -> /api/chat

    chat_response(native, model, *, id=None, now=None) -> dict          non-streaming
    completion_response(native, model, *, id=None, now=None) -> dict
    embedding_response(native, model, encoding_format="float") -> dict
    responses_reply(native, converted) -> dict                          `response`
    ChatStream(model, include_usage=False, *, id=None, now=None)        NDJSON -> SSE
    CompletionStream(model, include_usage=False, *, id=None, now=None)
    ResponsesStream(model, include_usage=False, *, request=None)    typed events
        .feed(chunk: dict) -> bytes     SSE bytes for one native chunk (maybe b"");
                                        a native {"error": ...} line ends the stream
        .fail(message: str) -> bytes    SSE error event + [DONE] (node broke mid-stream)
        .done: bool                     True once [DONE] was produced

    models_list(entries: Iterable[tuple[str, int]]) -> dict    /v1/models
    model_object(name: str, created: int) -> dict              /v1/models/{id}
    error_body(message, kind="server_error", code=None, param=None) -> dict
    error_from_native(status: int, body: bytes) -> dict   node error -> OpenAI shape
    sse_event(obj) -> bytes;  SSE_DONE = b"data: [DONE]\\n\\n";  SSE_CONTENT_TYPE

`Converted` is a frozen dataclass: `native` (the Ollama body; its "model" is the
name the client sent — the router replaces it with the resolved name), `model`
(what the client asked for, echoed in responses), `stream`, `include_usage`,
`encoding_format` (embeddings). Responses echo `model` as the client spelled it
(an alias stays an alias), like Ollama's own /v1 layer.

Every request field is either carried to Ollama or refused with a 400 naming it;
only the purely informational fields in `request.INFORMATIONAL` are accepted without
effect (they change nothing in the output). Wire facts: shared reference §2.
"""

from herd.router.convert.chat import chat_request
from herd.router.convert.request import (
    Converted,
    completion_request,
    embedding_request,
)
from herd.router.convert.response import (
    FINGERPRINT,
    SSE_CONTENT_TYPE,
    SSE_DONE,
    chat_response,
    completion_response,
    embedding_response,
    error_body,
    error_from_native,
    model_object,
    models_list,
    new_id,
    sse_event,
    usage,
)
from herd.router.convert.response_items import responses_reply
from herd.router.convert.responses import responses_request
from herd.router.convert.responses_stream import ResponsesStream
from herd.router.convert.stream import ChatStream, CompletionStream

__all__ = [
    "FINGERPRINT",
    "SSE_CONTENT_TYPE",
    "SSE_DONE",
    "ChatStream",
    "CompletionStream",
    "ResponsesStream",
    "Converted",
    "chat_request",
    "chat_response",
    "completion_request",
    "completion_response",
    "embedding_request",
    "embedding_response",
    "error_body",
    "error_from_native",
    "model_object",
    "models_list",
    "new_id",
    "responses_reply",
    "responses_request",
    "sse_event",
    "usage",
]
