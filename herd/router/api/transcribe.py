"""Speech to text: /api/transcribe, /v1/audio/transcriptions, /v1/audio/translations.

The client sends a multipart form (file, model, and optional fields, in any
order). It is parsed as it arrives (herd.router.http.multipart) and sent on
to the chosen node as a new form on /v1/audio/... with the model renamed to
the node's id. When `model` comes before the file, the audio streams through
(nothing is held); when the file comes first (curl's `-F file=@x -F model=y`
order), it is held in memory, never on disk, up to `router.limits.max_audio_mb`,
until the model is known. Audio bytes are never logged or traced.

/api/transcribe answers `{text, language?, duration?, segments?}` (asking the
node for verbose_json); the /v1 routes answer what the node answered, in the
`response_format` the client chose (json, text, srt, vtt, verbose_json).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterator
from typing import Any

import falcon

from herd.errors import BodyTooLarge, HerdError, InvalidRequest, NoHealthyNode
from herd.manifest.model import Fleet, Model, Node
from herd.router.api.kinds import check_kind
from herd.router.convert import error_body, to_openai
from herd.router.gate import decision_headers
from herd.router.http import multipart as mp
from herd.router.routing.forward import Opened, Outcome, dumps
from herd.router.routing.openaileg import node_model_id
from herd.router.routing.proxy import StreamBroken, UploadBroken, UpstreamFailure
from herd.router.runtime import Runtime

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
#: Form fields each route accepts (besides `file` and `model`).
_FIELDS = {
    "/api/transcribe": frozenset({"language", "prompt"}),
    "/v1/audio/transcriptions": frozenset(
        {
            "language",
            "prompt",
            "response_format",
            "temperature",
            "timestamp_granularities[]",
        }
    ),
    "/v1/audio/translations": frozenset({"prompt", "response_format", "temperature"}),
}
ROUTES = tuple(_FIELDS)
#: Content types a node's transcription is relayed with as they are.
_ANSWER_TYPES = frozenset(
    {"application/json", "text/plain", "text/vtt", "text/srt", "application/x-subrip"}
)
#: Form overhead allowed beyond the audio itself (field values, part headers).
FORM_SLACK = 1024 * 1024


class Upload:
    """The client's form as it is read: fields so far, the file, the rest."""

    def __init__(self, route: str, reader: mp.MultipartReader, limit: int):
        self.route = route
        self.allowed = _FIELDS[route] | {"file", "model"}
        self.parts = reader.parts()
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.file: mp.Part | None = None
        self.chunks: Iterator[bytes] | None = None
        self.held: list[bytes] | None = None
        self.size = 0

    def read_until_model(self) -> None:
        """Read parts until the model and the file are both known (holding
        the file if it came first), or the form ends."""
        for part, chunks in self.parts:
            self._check(part)
            if part.name == "file":
                self.file, self.chunks = part, chunks
                if "model" in self.fields:
                    return  # streamed from here on
                self.held = list(self._counted(chunks))
                self.chunks = None
                continue
            self.fields[part.name] = check_field(
                part.name, mp.read_text(chunks, part.name)
            )
            if part.name == "model" and self.file is not None:
                return
        if self.file is None:
            raise InvalidRequest(
                "form field 'file' (the audio) is required", param="file"
            )

    def _check(self, part: mp.Part) -> None:
        if part.name not in self.allowed:
            raise InvalidRequest(
                f"form field '{part.name[:64]}' is not accepted by {self.route} "
                f"(accepted: {', '.join(sorted(self.allowed))})",
                param=part.name[:64],
            )
        if part.name == "file" and part.filename is None:
            raise InvalidRequest(
                "form field 'file' must be a file upload (curl -F file=@audio.wav)",
                param="file",
            )
        if part.name != "file" and part.filename is not None:
            raise InvalidRequest(
                f"form field '{part.name}' must be text", param=part.name
            )

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.size += len(chunk)
            if self.size > self.limit:
                raise BodyTooLarge(
                    f"audio file is over the limit of {self.limit / 1048576:g} MB "
                    "(router.limits.max_audio_mb)"
                )
            yield chunk

    def form(
        self, boundary: bytes, node_id: str, extra: dict[str, str]
    ) -> Iterator[bytes]:
        """The form sent to the node: fields, the file, then the client's
        remaining fields as they are read."""
        fields = {**self.fields, **extra, "model": node_id}
        for name, value in fields.items():
            yield mp.encode_field(boundary, name, value)
        assert self.file is not None
        yield mp.file_head(
            boundary, "file", self.file.filename or "audio", self.file.content_type
        )
        if self.held is not None:
            yield from self.held
        else:
            assert self.chunks is not None
            yield from self._counted(self.chunks)
        yield b"\r\n"
        for part, chunks in self.parts:
            self._check(part)
            value = check_field(part.name, mp.read_text(chunks, part.name))
            if part.name == "model" or part.name in extra:
                continue
            yield mp.encode_field(boundary, part.name, value)
        yield mp.closing(boundary)


class Transcribe:
    """POST /api/transcribe (native answer) and /v1/audio/* (OpenAI's)."""

    def __init__(self, runtime: Runtime, route: str):
        self.rt = runtime
        self.route = route
        self.native = route == "/api/transcribe"
        self.node_path = (
            "/v1/audio/translations"
            if route.endswith("translations")
            else "/v1/audio/transcriptions"
        )

    def on_post(self, req: Any, resp: Any) -> None:
        rt = self.rt
        ctx = req.context
        fleet: Fleet = ctx.served.fleet
        outcome: Outcome = ctx.outcome
        outcome.route = self.route
        boundary = mp.boundary_of(req.content_type)
        limit = int(fleet.router.limits.max_audio_mb * 1024 * 1024)
        length = req.content_length
        if length is not None and length > limit + FORM_SLACK:
            raise BodyTooLarge(
                f"request body of {length} bytes is over the audio limit of "
                f"{fleet.router.limits.max_audio_mb:g} MB (router.limits.max_audio_mb)"
            )
        chunked = length is None and req.env.get("wsgi.input_terminated")
        stream = req.stream if chunked else req.bounded_stream
        upload = Upload(self.route, mp.MultipartReader(stream.read, boundary), limit)
        upload.read_until_model()
        name = upload.fields.get("model")
        outcome.requested_model = name
        models = rt.models_for(fleet, ctx.client, name)
        check_kind(self.route, models[0])
        extra = self._check_fields(upload.fields)
        rt.limiter.take(ctx.client)
        opened = self._send(fleet, models, upload, extra, outcome)
        decision_headers(resp, outcome, req)
        ctx.deferred = True
        outcome.status = opened.status
        error = None if opened.status < 400 else "node_status"
        try:
            self._answer(resp, opened)
        finally:
            rt.finish(opened, outcome, error)

    def _check_fields(self, fields: dict[str, str]) -> dict[str, str]:
        """The fields herd adds for the node (each client field was checked
        as it was read, by `check_field`)."""
        return {"response_format": "verbose_json"} if self.native else {}

    def _send(
        self,
        fleet: Fleet,
        models: tuple[Model, ...],
        upload: Upload,
        extra: dict[str, str],
        outcome: Outcome,
    ) -> Opened:
        """Queue for a node and send the form; a node that cannot be reached
        before the upload began is skipped for the next one."""
        rt = self.rt
        limits = fleet.router.limits
        error: HerdError | None = None
        attempts = limits.retries + 1
        for model in models:
            decision = rt.forwarder.decide(fleet, model, outcome.prefer)
            outcome.decisions.append(decision)
            ranked = list(decision.nodes)
            while ranked and attempts > 0:
                name, waited = rt.queues.acquire(tuple(ranked), limits.queue_timeout_s)
                ranked.remove(name)
                attempts -= 1
                outcome.queue_ms = round((outcome.queue_ms or 0.0) + waited, 3)
                node = fleet.node(name)
                assert node is not None
                try:
                    return self._attempt(node, model, upload, extra, limits, outcome)
                except UpstreamFailure as ex:
                    error = rt.forwarder.node_failed(node, ex.kind, ex.message)
                    outcome.retries += 1
        raise error or NoHealthyNode(
            f"no healthy node can serve model {models[0].name}"
        )

    def _attempt(
        self,
        node: Node,
        model: Model,
        upload: Upload,
        extra: dict[str, str],
        limits: Any,
        outcome: Outcome,
    ) -> Opened:
        rt = self.rt
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                rt.queues.release(node.name)

        boundary = b"herd-" + secrets.token_hex(16).encode()
        node_id = node_model_id(rt.poller, node, model)
        if node.api != "openai":
            node_id = model.name
        sent = rt.monotonic()
        try:
            reply = rt.upstream.upload(
                node.url,
                self.node_path,
                f"multipart/form-data; boundary={boundary.decode()}",
                upload.form(boundary, node_id, extra),
                connect_s=limits.connect_timeout_s,
                network_s=limits.first_byte_timeout_s,
                headers=node.auth,
            )
            outcome.node, outcome.served_model = node.name, model.name
            body = reply.read()
            reply.close()
        except UpstreamFailure:
            release()
            raise
        except (UploadBroken, StreamBroken) as ex:
            release()
            raise rt.forwarder.node_failed(node, "protocol", str(ex)) from None
        except BaseException:
            release()
            raise
        outcome.ttft_ms = round((rt.monotonic() - outcome.started) * 1000.0, 3)
        return Opened(
            node=node,
            model=model,
            status=reply.status,
            content_type=reply.content_type,
            body=body,
            sent_at=sent,
            _release=release,
        )

    def _answer(self, resp: Any, opened: Opened) -> None:
        body = opened.body or b""
        resp.status = opened.status
        if opened.status != 200:
            resp.content_type = falcon.MEDIA_JSON
            message = to_openai.error_message(body)
            if self.native:
                resp.data = dumps({"error": message})
            else:
                kind = "invalid_request_error" if opened.status < 500 else "api_error"
                resp.data = dumps(error_body(message, kind))
            return
        if not self.native:
            resp.content_type = relayed_type(opened.content_type)
            resp.set_header("X-Content-Type-Options", "nosniff")
            resp.data = body
            return
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(native_answer(body))


def relayed_type(content_type: str | None) -> str:
    """The node's Content-Type if it is one a transcription comes in (json,
    text, srt, vtt), else plain text: a node's `text/html` must not make the
    router's origin serve a page."""
    kind = (content_type or "").partition(";")[0].strip().lower()
    if kind in _ANSWER_TYPES:
        return content_type or falcon.MEDIA_JSON
    return "text/plain; charset=utf-8" if kind else falcon.MEDIA_JSON


def check_field(name: str, value: str) -> str:
    """An optional form field's value, checked wherever in the form it came
    (before the file or after it, when the audio already streams); 400 else."""
    if name == "response_format" and value not in RESPONSE_FORMATS:
        raise InvalidRequest(
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
        )
    if name == "temperature":
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise InvalidRequest(
                "temperature must be a finite number", param="temperature"
            )
    if name == "language" and not (0 < len(value) <= 16 and value.isalpha()):
        raise InvalidRequest(
            "language must be a language code such as 'en'", param="language"
        )
    return value


def native_answer(body: bytes) -> dict[str, Any]:
    """A node's verbose_json (or json, or plain text) answer as /api/transcribe's."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {"text": body.decode("utf-8", "replace").strip()}
    if not isinstance(doc, dict):
        return {"text": str(doc)}
    out: dict[str, Any] = {"text": str(doc.get("text") or "")}
    if isinstance(doc.get("language"), str):
        out["language"] = doc["language"]
    if isinstance(doc.get("duration"), int | float):
        out["duration"] = doc["duration"]
    segments = doc.get("segments")
    if isinstance(segments, list):
        out["segments"] = [
            {"start": s.get("start"), "end": s.get("end"), "text": s.get("text")}
            for s in segments
            if isinstance(s, dict)
        ]
    return out
