"""The bundle store served as a read-only registry: what `ollama pull` needs.

`ollama pull --insecure ROUTER:PORT/library/NAME:TAG` makes the node's Ollama
server fetch, in order (Ollama's registry pull sequence):

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
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falcon

from herd.bundle.ollama import HOST, Manifest, parse_manifest
from herd.bundle.scan import MANIFEST
from herd.errors import BundleError
from herd.router.http.blobsender import SenderClient, SenderUnavailable
from herd.settings import BLOB_SENDER

DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})\Z")
#: One part of an Ollama model name (namespace, model or tag), no dots first.
NAME_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}\Z")
CHUNK = 1 << 20
#: Sent through the server with the headers; the rest by sendfile, in pieces.
FIRST = 64 << 10
SENDFILE_CHUNK = 256 << 10
#: Bodies larger than this are sent by the blob sender process, not the worker.
HANDOFF_MIN = 1 << 20
#: A client that takes no bytes for this long is dropped.
IDLE_S = 60.0
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


def _shrank(path: Path) -> OSError:
    """The blob got shorter while being sent (removed and replaced?). Dropping
    the connection tells the client its body is short; never pad it."""
    return OSError(f"{path.name} shrank while being sent")


def _chunks(path: Path, offset: int, length: int) -> Iterator[bytes]:
    """`length` bytes of `path` from `offset`, read `CHUNK` at a time.

    Memory stays bounded by one chunk whatever the blob's size, and the
    server sends each chunk before the next is read, so a multi-GiB pull
    yields to other requests between chunks instead of holding the worker.
    The file is closed when the server closes the response iterator (also
    when the client hangs up early, as Ollama's resolve GET does).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        while length > 0:
            data = os.pread(fd, min(CHUNK, length), offset)
            if not data:
                raise _shrank(path)
            offset += len(data)
            length -= len(data)
            yield data
    finally:
        os.close(fd)


def _sendfile(
    sock: Any, path: Path, offset: int, length: int, skip_head: bool = False
) -> Iterator[bytes]:
    """`length` bytes of `path` from `offset`, zero-copy with `os.sendfile`.

    For gunicorn's gevent worker, which hands the connection's socket to the
    app (`gunicorn.sock`). The first bytes go through the server as usual (it
    sends the headers with them); the rest goes straight from the page cache
    to the socket, `SENDFILE_CHUNK` at a time, yielding to the other requests
    between pieces and while the client is slow. Nothing of the blob is held
    in the worker's memory.
    """
    from gevent import sleep
    from gevent.socket import wait_write

    fd = os.open(path, os.O_RDONLY)
    try:
        if skip_head:  # the headers went out already
            left, out = length, sock.fileno()
        else:
            head = os.pread(fd, min(FIRST, length), offset)
            if not head:
                raise _shrank(path)
            yield head
            offset, left, out = offset + len(head), length - len(head), sock.fileno()
        while left > 0:
            try:
                sent = os.sendfile(out, fd, offset, min(left, SENDFILE_CHUNK))
            except BlockingIOError:
                wait_write(out, timeout=IDLE_S)
                continue
            if not sent:
                raise _shrank(path)
            offset += sent
            left -= sent
            sleep(0)
    finally:
        os.close(fd)


def _handoff(
    sender: SenderClient, sock: Any, path: Path, offset: int, length: int
) -> Iterator[bytes]:
    """`length` bytes of `path` from `offset`, the bulk sent by the blob sender.

    The first bytes go through the server with the headers; the rest is sent
    by the low-priority sender process (herd/router/http/blobsender.py) while
    this greenlet waits at no CPU cost, so pulls never hold up the worker's
    other requests. When the sender cannot be started, the worker sends the
    rest itself (`_sendfile`).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.pread(fd, min(FIRST, length), offset)
        if not head:
            raise _shrank(path)
        yield head
        offset, left = offset + len(head), length - len(head)
        try:
            sender.send(sock, fd, offset, left)
        except SenderUnavailable:
            yield from _sendfile(sock, path, offset, left, skip_head=True)
    finally:
        os.close(fd)


_SENDER: list[SenderClient | None] = []


def _sender() -> SenderClient | None:
    """This worker's blob sender client (its process starts on first use), or
    None when HERD_BLOB_SENDER is `off`."""
    if not _SENDER:
        mode = BLOB_SENDER.resolve()
        _SENDER.append(None if mode == "off" else SenderClient(mode))
    return _SENDER[0]


def _body(
    req: falcon.Request, resp: falcon.Response, path: Path, offset: int, length: int
) -> None:
    resp.content_length = length
    sock = req.env.get("gunicorn.sock")
    if sock is None or length <= FIRST or not hasattr(os, "sendfile"):
        resp.stream = _chunks(path, offset, length)
    elif length > HANDOFF_MIN and (sender := _sender()) is not None:
        resp.stream = _handoff(sender, sock, path, offset, length)
    else:
        resp.stream = _sendfile(sock, path, offset, length)


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
        try:
            wanted = byte_range(req.get_header("Range"), size)
        except Unsatisfiable:
            resp.status = falcon.HTTP_416
            resp.set_header("Content-Range", f"bytes */{size}")
            resp.content_length = 0
            resp.data = b""
            return
        if wanted is None:
            # Ollama's "resolve" GET needs Location; it reads no body, so give
            # it none. Other clients get the whole blob (Location is harmless).
            resp.location = req.url
            if req.user_agent and req.user_agent.startswith("ollama/"):
                resp.content_length = 0
                resp.data = b""
                return
            _body(req, resp, path, 0, size)
            return
        first, last = wanted
        resp.status = falcon.HTTP_206
        resp.content_range = (first, last, size)
        _body(req, resp, path, first, last - first + 1)


class Unsatisfiable(Exception):
    """A well-formed range that lies outside the blob (answered 416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) a `Range` header asks of a `size`-byte blob.

    None means "send the whole blob with 200": no header, another unit, a
    list of ranges, or a malformed one (all of which HTTP says to ignore).
    A well-formed range that starts at or past the end is 416. Ollama does not
    look at the status of its ranged GETs, so a range is either honoured to
    the byte or refused; it is never silently widened to the whole file.
    """
    if not header:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    a, dash, b = spec.strip().partition("-")
    a, b = a.strip(), b.strip()
    if not dash or not (_digits(a) or a == "") or not (_digits(b) or b == ""):
        return None
    if a == "":
        if b == "":
            return None
        suffix = _position(b)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(size)
        return max(0, size - suffix), size - 1
    first = _position(a)
    if b and _position(b) < first:
        return None
    last = _position(b) if b else size - 1
    if first >= size:
        raise Unsatisfiable(size)
    return first, min(last, size - 1)


#: Digits of a range position read as written; longer ones lie past any blob.
_POSITION_DIGITS = 18


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit also takes `²` (a latin-1 header byte),
    which int() then refuses."""
    return text.isascii() and text.isdigit()


def _position(digits: str) -> int:
    """A range position; a huge one (int() refuses over 4300 digits) is just
    past the end of any blob, which is all it can mean."""
    digits = digits.lstrip("0")
    if len(digits) > _POSITION_DIGITS:
        return 10**_POSITION_DIGITS
    return int(digits or "0")


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
    # Whole bundles (signed index, report, blobs) for the peer router of a pair.
    from herd.router.api.bundlefiles import ROUTE, BundleFiles

    app.add_route(ROUTE, BundleFiles(lambda: reader.root))
