"""The error hierarchy: every herd error carries the HTTP status it maps to.

The router maps these in one place (one `add_error_handler`); the CLI prints
`str(ex)` on one line and exits 1. Nothing else should invent status codes.
"""

from __future__ import annotations


class HerdError(Exception):
    """Base of every error herd raises on purpose."""

    status = 500
    #: OpenAI-style error type, used when the error is rendered for a /v1 route.
    kind = "server_error"
    #: OpenAI-style error code (None when OpenAI has no matching code).
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        detail: str | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        #: The same error with fleet internals (node names, URLs, addresses),
        #: shown only to operator client groups; `message` never has them.
        self.detail = detail
        #: The request field at fault (OpenAI's `param`), when there is one.
        self.param = param


class InvalidRequest(HerdError):
    status = 400
    kind = "invalid_request_error"


class Unauthorized(HerdError):
    status = 401
    kind = "authentication_error"
    code = "invalid_api_key"


class Forbidden(HerdError):
    status = 403
    kind = "permission_error"


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"


class RegistryDenied(Forbidden):
    """The registry (/v2) is for the fleet's nodes; a client group asked."""

    code = "DENIED"


class ModelNotFound(HerdError):
    status = 404
    kind = "invalid_request_error"
    code = "model_not_found"


class RequestTimeout(HerdError):
    """The client did not send its request body in time (the router closes)."""

    status = 408
    kind = "invalid_request_error"


class BodyTooLarge(HerdError):
    status = 413
    kind = "invalid_request_error"


class MisdirectedHost(HerdError):
    """The Host header names no name this router is known by (DNS rebinding
    guard, herd.router.hostnames)."""

    status = 421
    kind = "invalid_request_error"
    code = "misdirected_request"


class RateLimited(HerdError):
    status = 429
    kind = "rate_limit_error"
    code = "rate_limit_exceeded"


class NoHealthyNode(HerdError):
    status = 503
    kind = "server_error"


class QueueFull(HerdError):
    """All nodes for a model are at capacity and the wait queue is full.

    Ollama answers a full queue with 503; OpenAI clients expect 429 (and retry).
    """

    status = 503
    kind = "rate_limit_error"
    code = "server_busy"


class UpstreamError(HerdError):
    status = 502
    kind = "server_error"


class UpstreamTimeout(HerdError):
    status = 504
    kind = "server_error"


class ConfigError(HerdError):
    """A manifest, state or CLI input problem; printed as one line by the CLI."""

    status = 400


class ManifestError(ConfigError):
    """A manifest failed to load; `problems` holds one `Problem` per error."""

    def __init__(self, source: str, problems: list):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


class StateError(ConfigError):
    """The state store refused an operation (conflict, missing revision...)."""

    status = 409


class BundleError(ConfigError):
    """A bundle was refused; the message names the file and the reason."""
