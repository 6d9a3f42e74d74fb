"""Every error the router answers, rendered in one place, in the caller's API shape.

Routes under /v1 answer OpenAI-shaped errors
`{"error": {"message", "type", "param", "code"}}`; everything else answers
Ollama-shaped `{"error": "..."}`; the registry (/v2) answers the
distribution spec's `{"errors": [{"code", "message"}]}`. An error's `detail`
(which node failed, at which URL, why it was excluded) is shown to operator
client groups only; everyone else gets its `message`, which names no node.
Status codes come from the `HerdError`
class (herd.errors); the one exception is a full queue, which OpenAI clients
expect as 429 (they back off and retry) while Ollama clients expect 503.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

from herd.errors import HerdError, QueueFull
from herd.router.observe.logfield import logged
from herd.router.policy import is_operator
from herd.router.routing.forward import dumps

log = logging.getLogger("herd.router")

#: OpenAI error `type` for falcon's own HTTP errors, by status.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


#: Registry error `code` (distribution spec) for each status.
_REGISTRY_CODES = {
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NAME_UNKNOWN",
    405: "UNSUPPORTED",
    429: "TOOMANYREQUESTS",
}


def is_openai(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def is_registry(path: str) -> bool:
    return path.startswith("/v2/") or path == "/v2"


def registry_body(status: int, message: str) -> dict[str, Any]:
    code = _REGISTRY_CODES.get(status, "UNKNOWN")
    return {"errors": [{"code": code, "message": message}]}


def ollama_body(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_body(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def render(
    req: Any,
    resp: Any,
    status: int,
    message: str,
    kind: str,
    code: str | None,
    param: str | None = None,
) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    # An error body may quote the client's path or model name: a browser must
    # read it as the JSON it says it is, never sniff it into a page.
    resp.set_header("X-Content-Type-Options", "nosniff")
    if is_openai(req.path):
        resp.data = dumps(openai_body(message, kind, code, param))
    elif is_registry(req.path):
        resp.data = dumps(registry_body(status, message))
    else:
        resp.data = dumps(ollama_body(message))
    outcome = getattr(req.context, "outcome", None)
    if outcome is not None:
        outcome.status = status
        outcome.error_class = outcome.error_class or (code or kind)


def handle_herd_error(req: Any, resp: Any, ex: HerdError, params: Any) -> None:
    status = ex.status
    if isinstance(ex, QueueFull) and is_openai(req.path):
        status = 429
    for name, value in ex.headers.items():
        resp.set_header(name, value)
    outcome = getattr(req.context, "outcome", None)
    if outcome is not None:
        outcome.error_class = type(ex).__name__
    message = ex.message
    if ex.detail and is_operator(getattr(req.context, "client", None)):
        message = ex.detail
    render(req, resp, status, message, ex.kind, ex.code, ex.param)


def handle_http_error(req: Any, resp: Any, ex: falcon.HTTPError, params: Any) -> None:
    status = int(str(ex.status).split(" ", 1)[0]) if ex.status else 500
    message = ex.description or ex.title or "error"
    if status == 404 and not ex.description:
        message = f"no route {req.method} {req.path}"
    if status == 405:
        message = f"method {req.method} not allowed on {req.path}"
    for name, value in (ex.headers or {}).items():
        resp.set_header(name, value)
    kind = _OPENAI_TYPES.get(status, "server_error")
    render(req, resp, status, message, kind, None)


def handle_unexpected(req: Any, resp: Any, ex: Exception, params: Any) -> None:
    if isinstance(ex, HerdError):
        return handle_herd_error(req, resp, ex, params)
    if isinstance(ex, falcon.HTTPError):
        return handle_http_error(req, resp, ex, params)
    log.exception(
        "internal error on %s %s", logged(req.method, 16), logged(req.path, 200)
    )
    render(req, resp, 500, f"internal error: {type(ex).__name__}", "server_error", None)


def install(app: falcon.App) -> None:
    """Register the handlers (most specific last: falcon picks by class)."""
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(HerdError, handle_herd_error)
