"""Image generation: POST /api/generate-image (PNG out) and /v1/images/generations.

Both go to the node's OpenAI-style /v1/images/generations, which OpenAI-
compatible image servers (stable-diffusion.cpp's server, LocalAI, ...) and
Ollama's experimental image generation serve, asking for base64 (`b64_json`):
herd has nowhere to host a URL, so `response_format: url` is refused. The
request takes a node slot, waits in the queue and is bound by the timeouts
like any other; the answer is not streamed.

/api/generate-image takes `{model, prompt, width, height, steps?, seed?,
negative_prompt?}` and answers the PNG itself (`curl -o out.png` works);
/v1/images/generations answers OpenAI's `{created, data: [{b64_json}]}`.
`steps`, `seed` and `negative_prompt` go to the node as extra fields, which
the servers above read (an OpenAI server that does not know them ignores them).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import Any

import falcon

from herd.errors import InvalidRequest, UpstreamError
from herd.router.api.kinds import check_kind
from herd.router.api.ollama import check_fields
from herd.router.convert import error_body, to_openai
from herd.router.gate import decision_headers
from herd.router.routing.forward import Outcome, dumps
from herd.router.routing.openaileg import OpenAIForm
from herd.router.runtime import Runtime

NODE_PATH = "/v1/images/generations"
#: Bounds of a generated image's sides and of its sampling steps.
SIDE_MIN, SIDE_MAX = 64, 4096
MAX_PIXELS = 16 * 1024 * 1024
STEPS_MAX = 500
PROMPT_MAX = 64 * 1024
N_MAX = 4
_SIZE = re.compile(r"^([0-9]{2,5})x([0-9]{2,5})\Z")
_NATIVE_FIELDS = frozenset(
    {"model", "prompt", "width", "height", "steps", "seed", "negative_prompt"}
)
_OPENAI_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "size",
        "response_format",
        "quality",
        "style",
        "user",
        "seed",
        "steps",
        "negative_prompt",
        "output_format",
        "background",
        "moderation",
    }
)


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        raise InvalidRequest(
            f"'{key}' must be an integer from {low} to {high}", param=key
        )
    return value


def _size(width: int, height: int) -> str:
    if width * height > MAX_PIXELS:
        raise InvalidRequest(
            f"image of {width}x{height} is over {MAX_PIXELS // 1048576} megapixels",
            param="width",
        )
    return f"{width}x{height}"


def _text(body: dict[str, Any], key: str, required: bool = False) -> None:
    value = body.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidRequest(f"'{key}' must be a non-empty string", param=key)
    if len(value) > PROMPT_MAX:
        raise InvalidRequest(
            f"'{key}' is longer than {PROMPT_MAX} characters", param=key
        )


def _unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    for key in body:
        if key not in allowed:
            raise InvalidRequest(f"'{key}' is not an image generation field", param=key)


def native_request(body: dict[str, Any]) -> dict[str, Any]:
    """/api/generate-image's body as the node's /v1/images/generations body."""
    _unknown(body, _NATIVE_FIELDS)
    _text(body, "prompt", required=True)
    _text(body, "negative_prompt")
    width = _int(body, "width", SIDE_MIN, SIDE_MAX)
    height = _int(body, "height", SIDE_MIN, SIDE_MAX)
    if width is None or height is None:
        missing = "width" if width is None else "height"
        raise InvalidRequest(f"'{missing}' is required", param=missing)
    out: dict[str, Any] = {
        "model": body["model"],
        "prompt": body["prompt"],
        "size": _size(width, height),
        "n": 1,
        "response_format": "b64_json",
    }
    if _int(body, "steps", 1, STEPS_MAX) is not None:
        out["steps"] = body["steps"]
    if _int(body, "seed", -(2**63), 2**64 - 1) is not None:
        out["seed"] = body["seed"]
    if body.get("negative_prompt") is not None:
        out["negative_prompt"] = body["negative_prompt"]
    return out


def openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """/v1/images/generations' body, checked (b64_json asked for when unset)."""
    _unknown(body, _OPENAI_FIELDS)
    _text(body, "prompt", required=True)
    _text(body, "negative_prompt")
    fmt = body.get("response_format")
    if fmt == "url":
        raise InvalidRequest(
            "response_format 'url' is not available: herd does not host images; "
            "use 'b64_json'",
            param="response_format",
        )
    if fmt is not None and fmt != "b64_json":
        raise InvalidRequest(
            "response_format must be 'b64_json'", param="response_format"
        )
    _int(body, "n", 1, N_MAX)
    _int(body, "steps", 1, STEPS_MAX)
    _int(body, "seed", -(2**63), 2**64 - 1)
    size = body.get("size")
    if size is not None and size != "auto":
        match = _SIZE.match(size) if isinstance(size, str) else None
        if match is None:
            raise InvalidRequest(
                "size must be WIDTHxHEIGHT, e.g. 1024x1024", param="size"
            )
        width, height = int(match.group(1)), int(match.group(2))
        if not (SIDE_MIN <= width <= SIDE_MAX and SIDE_MIN <= height <= SIDE_MAX):
            raise InvalidRequest(
                f"size: each side must be from {SIDE_MIN} to {SIDE_MAX}", param="size"
            )
        _size(width, height)
    for key in ("quality", "style", "user", "output_format", "background"):
        _text(body, key)
    return {**body, "response_format": "b64_json"}


def images_of(answer: Any) -> list[str]:
    """The base64 images of a node's answer; raises ValueError on another shape."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or not data:
        raise ValueError("answer has no images")
    out = []
    for item in data:
        b64 = item.get("b64_json") if isinstance(item, dict) else None
        if not isinstance(b64, str) or not b64:
            raise ValueError("answer has no b64_json image")
        out.append(b64)
    return out


class Generate:
    """POST /api/generate-image (native) or /v1/images/generations (OpenAI)."""

    def __init__(self, runtime: Runtime, route: str):
        self.rt = runtime
        self.route = route
        self.native = route == "/api/generate-image"

    def on_post(self, req: Any, resp: Any) -> None:
        rt = self.rt
        ctx = req.context
        fleet = ctx.served.fleet
        outcome: Outcome = ctx.outcome
        outcome.route = self.route
        body, _ = rt.read_json(req, fleet)
        check_fields(body)
        if isinstance(body.get("model"), str):
            outcome.requested_model = body["model"]
        models = rt.models_for(fleet, ctx.client, body.get("model"))
        check_kind(self.route, models[0])
        request = native_request(body) if self.native else openai_request(body)
        rt.limiter.take(ctx.client)
        opened = rt.forwarder.open(
            fleet,
            NODE_PATH,
            request,
            models,
            stream=False,
            outcome=outcome,
            openai=OpenAIForm(NODE_PATH, request),
        )
        decision_headers(resp, outcome, req)
        ctx.deferred = True
        resp.status = opened.status
        outcome.status = opened.status
        error = None if opened.status == 200 else "node_status"
        try:
            if opened.status == 200:
                self._image(resp, opened.first_obj)
            else:
                message = to_openai.error_message(opened.body or b"")
                resp.content_type = falcon.MEDIA_JSON
                resp.data = dumps(
                    {"error": message}
                    if self.native
                    else error_body(message, "api_error")
                )
        except (ValueError, binascii.Error):
            outcome.status, error = 502, "bad_node_answer"
            raise UpstreamError(
                "the node chosen for this request gave an answer herd could not use"
            ) from None
        finally:
            rt.finish(opened, outcome, error)

    def _image(self, resp: Any, answer: Any) -> None:
        images = images_of(answer)
        if self.native:
            resp.content_type = "image/png"
            resp.data = base64.b64decode(images[0], validate=True)
            return
        created = answer.get("created")
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(
            {
                "created": created if isinstance(created, int) else int(time.time()),
                "data": [{"b64_json": b64} for b64 in images],
            }
        )
