"""Checks shared by every /v1 request conversion, and completions/embeddings.

Every field is carried or refused with a 400 naming it (see herd.router.convert).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from herd.errors import InvalidRequest

#: Accepted and ignored: identification/metadata that cannot change the output.
INFORMATIONAL = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    }
)


@dataclass(frozen=True)
class Converted:
    """A /v1 request turned into its native Ollama body, plus what the reply needs."""

    native: dict[str, Any]
    model: str
    stream: bool = False
    include_usage: bool = False
    encoding_format: str = "float"
    #: Tool-call demands enforced on the reply (herd.router.convert.toolchoice).
    plan: Any = None
    #: The request as the client sent it, for replies that echo it (Responses).
    echo: Any = None


#: The `where` of top-level checks (a route); nested checks pass a field path.
ROUTES = frozenset({"chat.completions", "completions", "embeddings", "responses"})

_KIND_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def field_path(where: str, key: str) -> str:
    """The OpenAI `param` of field `key` checked at `where`."""
    return key if where in ROUTES else f"{where}.{key}"


def refuse(where: str, key: str, problem: str) -> InvalidRequest:
    """A 400 naming the field by its path (also OpenAI's `param`)."""
    path = field_path(where, key)
    prefix = f"{where}: " if where in ROUTES else ""
    return InvalidRequest(f"{prefix}'{path}' {problem}", param=path)


def check_fields(body: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in body:
        if key not in allowed and key not in INFORMATIONAL:
            path = field_path(where, key)
            prefix = f"{where}: " if where in ROUTES else ""
            raise InvalidRequest(f"{prefix}unsupported field '{path}'", param=path)


def get_field(
    body: Mapping[str, Any], key: str, kinds: tuple[type, ...], where: str
) -> Any:
    """`body[key]` if it is one of `kinds` (bool only if listed), None if absent
    or null; otherwise a 400 naming the field."""
    value = body.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise refuse(where, key, f"has the wrong type (expected {names})")
    return value


def require_model(body: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest(f"{where}: request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise refuse(where, "model", "is required (a model name)")
    return body


def one_choice(body: Mapping[str, Any], where: str) -> None:
    for key in ("n", "best_of"):
        n = get_field(body, key, (int,), where)
        if n is not None and n != 1:
            raise refuse(where, key, "must be 1 (one choice per request)")
    if get_field(body, "logit_bias", (dict,), where):
        raise refuse(where, "logit_bias", "is not supported by Ollama")


def sampling_options(body: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Sampling options; temperature and top_p default to 1.0 as in Ollama's /v1."""
    options: dict[str, Any] = {}
    number = (int, float)
    temperature = get_field(body, "temperature", number, where)
    options["temperature"] = 1.0 if temperature is None else temperature
    top_p = get_field(body, "top_p", number, where)
    options["top_p"] = 1.0 if not top_p else top_p
    for key in ("frequency_penalty", "presence_penalty"):
        value = get_field(body, key, number, where)
        if value is not None:
            options[key] = value
    seed = get_field(body, "seed", (int,), where)
    if seed is not None:
        options["seed"] = seed
    stop = get_field(body, "stop", (str, list), where)
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif stop:
        if not all(isinstance(s, str) for s in stop):
            raise refuse(where, "stop", "must be a string or a list of strings")
        options["stop"] = list(stop)
    limit = get_field(body, "max_completion_tokens", (int,), where)
    if limit is None:
        limit = get_field(body, "max_tokens", (int,), where)
    if limit is not None:
        options["num_predict"] = limit
    return options


def stream_flags(body: Mapping[str, Any], where: str) -> tuple[bool, bool]:
    stream = bool(get_field(body, "stream", (bool,), where))
    opts = get_field(body, "stream_options", (dict,), where) or {}
    inner = field_path(where, "stream_options")
    check_fields(opts, frozenset({"include_usage", "include_obfuscation"}), inner)
    get_field(opts, "include_obfuscation", (bool,), inner)
    return stream, bool(get_field(opts, "include_usage", (bool,), inner))


_COMPLETION_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "suffix",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "echo",
        "n",
        "best_of",
        "logit_bias",
    }
)


def completion_request(body: Any) -> Converted:
    """Turn a /v1/completions body into an /api/generate body."""
    where = "completions"
    body = require_model(body, where)
    check_fields(body, _COMPLETION_FIELDS, where)
    one_choice(body, where)
    if get_field(body, "echo", (bool,), where):
        raise refuse(where, "echo", "is not supported by Ollama")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise refuse(
            where,
            "prompt",
            "must be a string (token arrays and batches are not supported)",
        )
    stream, include_usage = stream_flags(body, where)
    native: dict[str, Any] = {
        "model": body["model"],
        "prompt": prompt,
        "stream": stream,
        "options": sampling_options(body, where),
    }
    suffix = get_field(body, "suffix", (str,), where)
    if suffix:
        native["suffix"] = suffix
    logprobs = get_field(body, "logprobs", (int,), where)
    if logprobs:
        if not 0 < logprobs <= 20:
            raise refuse(where, "logprobs", "must be within 0..20")
        native["logprobs"] = True
        native["top_logprobs"] = logprobs
    return Converted(native, body["model"], stream, include_usage)


def embedding_request(body: Any) -> Converted:
    """Turn a /v1/embeddings body into an /api/embed body."""
    where = "embeddings"
    body = require_model(body, where)
    check_fields(
        body, frozenset({"model", "input", "dimensions", "encoding_format"}), where
    )
    data = body.get("input")
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, list) or not data:
        raise refuse(where, "input", "must be a string or a non-empty list")
    if not all(isinstance(s, str) for s in data):
        raise refuse(where, "input", "token arrays are not supported; send strings")
    encoding = (get_field(body, "encoding_format", (str,), where) or "float").lower()
    if encoding not in ("float", "base64"):
        raise refuse(where, "encoding_format", "must be float or base64")
    native: dict[str, Any] = {"model": body["model"], "input": data}
    dimensions = get_field(body, "dimensions", (int,), where)
    if dimensions is not None:
        if dimensions < 1:
            raise refuse(where, "dimensions", "must be positive")
        native["dimensions"] = dimensions
    return Converted(native, body["model"], encoding_format=encoding)
