"""The bundle store served as a read-only registry: what `ollama pull` needs.

`ollama pull --insecure ROUTER:PORT/library/NAME:TAG` makes the node's Ollama
server fetch, in order (shared/reference/ollama-protocol.md §4.3):

1. `GET /v2/library/NAME/manifests/TAG`: the manifest bytes, verbatim;
2. per blob, `HEAD /v2/library/NAME/blobs/sha256:HEX`: exact Content-Length;
3. a "resolve" `GET` of the same URL without Range, which must answer 200 with a
   `Location` header (Ollama reads the header and closes the body);
4. `GET <Location>` with `Range: bytes=a-b`: 206 with exactly those bytes.

Blobs are served only when a manifest of the requested model references them,
so the registry never exposes content by digest alone. Names match
case-insensitively, as Ollama's own lookups do. Nothing here writes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import falcon

from herd.bundle.ollama import HOST, Manifest, parse_manifest
from herd.bundle.scan import MANIFEST
from herd.errors import BundleError

DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
#: One part of an Ollama model name (namespace, model or tag), no dots first.
NAME_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
CHUNK = 1 << 20
StoreRoot = Path | Callable[[], Path]


def _error(resp: falcon.Response, status: str, code: str, message: str) -> None:
    """Registry-style error body (distribution spec), e.g. MANIFEST_UNKNOWN."""
    resp.status = status
    resp.media = {"errors": [{"code": code, "message": message}]}


def _find(directory: Path, name: str) -> Path | None:
    """`directory/name`, matching case-insensitively like Ollama's lookups.

    `name` must be one valid Ollama name part (so never `..` or a path).
    """
    if not NAME_PART_RE.match(name):
        return None
    exact = directory / name
    if exact.exists():
        return exact
    if not directory.is_dir():
        return None
    wanted = name.lower()
    return next((p for p in directory.iterdir() if p.name.lower() == wanted), None)


class _Store:
    """Reads manifests and blobs from the store (its path may follow reloads)."""

    def __init__(self, root: StoreRoot):
        self._root = root

    @property
    def root(self) -> Path:
        return self._root() if callable(self._root) else self._root

    def model_dir(self, namespace: str, model: str) -> Path | None:
        ns = _find(self.root / "manifests" / HOST, namespace)
        return _find(ns, model) if ns else None

    def manifest(self, namespace: str, model: str, tag: str) -> bytes | None:
        model_dir = self.model_dir(namespace, model)
        path = _find(model_dir, tag) if model_dir else None
        if path is None or not path.is_file() or path.name.startswith("."):
            return None
        return path.read_bytes()

    def manifests(self, namespace: str, model: str) -> Iterator[Manifest]:
        model_dir = self.model_dir(namespace, model)
        if model_dir is None:
            return
        for tag in model_dir.iterdir():
            if tag.is_file() and not tag.name.startswith("."):
                try:
                    yield parse_manifest(tag.read_bytes(), str(tag))
                except BundleError:
                    continue

    def blob(self, namespace: str, model: str, digest: str) -> Path | None:
        """The blob file, if a manifest of this model references `digest`."""
        m = DIGEST_RE.match(digest)
        if not m:
            return None
        wanted = "sha256:" + m.group(1).lower()
        for manifest in self.manifests(namespace, model):
            if any(layer.digest == wanted for layer in manifest.blobs):
                path = self.root / "blobs" / wanted.replace(":", "-")
                return path if path.is_file() else None
        return None


class _Slice:
    """A file-like view of `length` bytes from `offset` (for Range replies)."""

    def __init__(self, path: Path, offset: int, length: int):
        self._fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._fh.seek(offset)
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._fh.read(min(size, CHUNK * 8))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()


class Base:
    """`GET /v2/`: the registry API version check."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_header("Docker-Distribution-API-Version", "registry/2.0")
        resp.media = {}


class Manifests:
    """`GET|HEAD /v2/{namespace}/{model}/manifests/{tag}`: the bytes, verbatim."""

    def __init__(self, store: _Store):
        self.store = store

    def on_get(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        namespace: str,
        model: str,
        tag: str,
    ) -> None:
        raw = self.store.manifest(namespace, model, tag)
        if raw is None:
            _error(
                resp, falcon.HTTP_404, "MANIFEST_UNKNOWN", f"{namespace}/{model}:{tag}"
            )
            return
        resp.content_type = MANIFEST
        resp.set_header(
            "Docker-Content-Digest", "sha256:" + hashlib.sha256(raw).hexdigest()
        )
        resp.data = raw
        resp.content_length = len(raw)

    def on_head(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        namespace: str,
        model: str,
        tag: str,
    ) -> None:
        self.on_get(req, resp, namespace, model, tag)
        resp.data = None


def _blob_head(resp: falcon.Response, path: Path, digest: str) -> int:
    """Headers every blob answer carries; returns the blob's size."""
    resp.content_type = "application/octet-stream"
    resp.set_header("Accept-Ranges", "bytes")
    resp.set_header("Docker-Content-Digest", digest.replace("-", ":", 1))
    return path.stat().st_size


class Blobs:
    """`HEAD|GET /v2/{namespace}/{model}/blobs/{digest}`, with Range support."""

    def __init__(self, store: _Store):
        self.store = store

    def _path(
        self, resp: falcon.Response, namespace: str, model: str, digest: str
    ) -> Path | None:
        path = self.store.blob(namespace, model, digest)
        if path is None:
            _error(
                resp, falcon.HTTP_404, "BLOB_UNKNOWN", f"{namespace}/{model}@{digest}"
            )
        return path

    def on_head(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        namespace: str,
        model: str,
        digest: str,
    ) -> None:
        path = self._path(resp, namespace, model, digest)
        if path is None:
            resp.media = None
            return
        resp.content_length = _blob_head(resp, path, digest)

    def on_get(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        namespace: str,
        model: str,
        digest: str,
    ) -> None:
        path = self._path(resp, namespace, model, digest)
        if path is None:
            return
        size = _blob_head(resp, path, digest)
        if req.range is None:
            # Ollama's "resolve" GET needs Location; it reads no body, so give
            # it none. Other clients get the whole blob (Location is harmless).
            resp.location = req.url
            if req.user_agent and req.user_agent.startswith("ollama/"):
                resp.content_length = 0
                resp.data = b""
                return
            resp.set_stream(open(path, "rb"), size)  # noqa: SIM115 - WSGI closes it
            return
        if req.range_unit != "bytes":
            raise falcon.HTTPRangeNotSatisfiable(size)
        first, last = req.range
        if first < 0:  # suffix range: the last -first bytes
            first, last = max(0, size + first), size - 1
        elif last < 0 or last >= size:
            last = size - 1
        if first >= size or first > last:
            raise falcon.HTTPRangeNotSatisfiable(size)
        length = last - first + 1
        resp.status = falcon.HTTP_206
        resp.content_range = (first, last, size)
        resp.set_stream(_Slice(path, first, length), length)


def add_routes(app: falcon.App, store: StoreRoot) -> None:
    """Mount the read-only registry on `app`, serving the bundle store `store`.

    `store` is the store directory, or a callable returning it (so a router
    can follow `bundles.store` across manifest reloads).
    """
    reader = _Store(store)
    base = Base()
    app.add_route("/v2", base)
    if not app.req_options.strip_url_path_trailing_slash:
        app.add_route("/v2/", base)
    app.add_route("/v2/{namespace}/{model}/manifests/{tag}", Manifests(reader))
    app.add_route("/v2/{namespace}/{model}/blobs/{digest}", Blobs(reader))
