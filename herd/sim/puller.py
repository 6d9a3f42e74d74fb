"""`herd sim`'s /api/pull: Ollama's registry pull, over real HTTP, into a SimStore.

The request sequence is the one Ollama's server makes for a GGUF model:

1. `GET /v2/NS/MODEL/manifests/TAG` with the manifest Accept header;
2. per blob not already on disk (layers, then config): `HEAD` for the size
   (its Content-Length), a "resolve" `GET` without Range that must carry a
   `Location` header (the data URL, resolved against the request URL), then
   parallel `GET`s with `Range: bytes=a-b` into `sha256-HEX-partial` at each
   part's offset; parts are total/16, clamped to [100 MB, 1000 MB] like
   Ollama's (tests may make them smaller), the status is not checked (as in
   Ollama, so a registry that ignores Range corrupts the blob and the
   digest check below catches it); each part's progress is saved beside the
   partial blob (`sha256-HEX-partial-N`), so an interrupted pull resumes
   where it stopped, asking only for the missing bytes (no HEAD then);
3. re-hash each blob; a mismatch deletes it ("digest mismatch, file must be
   downloaded again");
4. write the manifest bytes verbatim.

Errors are worded like Ollama's (registry unreachable, 404, digest mismatch,
no space left on device) so callers see what a real node would say. Runs in
plain threads; progress goes to a callback, about every 60 ms per blob.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.sim.store import DEFAULT_HOST, Name, SimStore, StoreError, manifest_blobs

MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
USER_AGENT = "ollama/0.33.0 (amd64 linux) Go/go1.24.1"
MIN_PART, MAX_PART, MAX_PARTS = 100_000_000, 1_000_000_000, 16
TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 0.06
#: How often the parts' progress is saved next to the partial blob.
SAVE_EVERY_S = 0.25
READ_BYTES = 256 << 10
Progress = Callable[[dict[str, Any]], None]


class PullError(StoreError):
    """A pull failure (streamed as `{"error": ...}`, or 500 when not streaming)."""

    def __init__(self, message: str):
        super().__init__(500, message)


@dataclass
class Part:
    """One Range part of a blob download, saved as Ollama saves it
    (`sha256-HEX-partial-N`: {"N", "Offset", "Size", "Completed"})."""

    n: int
    offset: int
    size: int
    completed: int


def _part_file(partial: Path, n: int) -> Path:
    return partial.with_name(f"{partial.name}-{n}")


def _completed(parts: list[Part]) -> int:
    return sum(p.completed for p in parts)


def load_parts(partial: Path) -> list[Part]:
    """The saved parts of an interrupted download (empty: start afresh).

    Parts that do not tile the blob exactly (a damaged or foreign file) are
    ignored, like a missing partial: the download starts over.
    """
    if not partial.is_file():
        return []
    parts = []
    for n in range(MAX_PARTS * 64):
        path = _part_file(partial, n)
        if not path.is_file():
            break
        try:
            doc = json.loads(path.read_bytes())
            part = Part(n, int(doc["Offset"]), int(doc["Size"]), int(doc["Completed"]))
        except (OSError, ValueError, KeyError, TypeError):
            return []
        if not 0 <= part.completed <= part.size:
            return []
        parts.append(part)
    offset = 0
    for part in parts:
        if part.offset != offset or part.size <= 0:
            return []
        offset += part.size
    return parts


def save_parts(partial: Path, parts: list[Part]) -> None:
    for part in parts:
        doc = {
            "N": part.n,
            "Offset": part.offset,
            "Size": part.size,
            "Completed": part.completed,
        }
        tmp = _part_file(partial, part.n).with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, _part_file(partial, part.n))


def part_size(total: int, override: int | None = None) -> int:
    """Ollama's part size: total/16 clamped to [100 MB, 1000 MB]."""
    if override:
        return max(1, override)
    return min(max(total // MAX_PARTS, MIN_PART), MAX_PART)


def _request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=TIMEOUT_S)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path, headers=headers or {})
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException) as ex:
        conn.close()
        reason = getattr(ex, "strerror", None) or str(ex) or type(ex).__name__
        raise PullError(
            f'{method} "{url}": dial tcp {parts.netloc}: connect: {reason.lower()}'
        ) from ex


class Puller:
    """One pull of one model into `store`."""

    def __init__(
        self,
        store: SimStore,
        progress: Progress,
        *,
        insecure: bool = False,
        part_bytes: int | None = None,
        rate: float | None = None,
    ):
        self.store = store
        self.progress = progress
        self.insecure = insecure
        self.part_bytes = part_bytes
        #: Blob bytes downloaded by this pull (a resumed pull fetches less).
        self.fetched = 0
        #: Bytes per second for all parts together (None: as fast as it goes).
        self.rate = rate
        self._lock = threading.Lock()
        self._free_at = time.monotonic()

    def pull(self, model: Any) -> None:
        name = Name.parse(model)
        self.progress({"status": "pulling manifest"})
        raw = self._manifest(name)
        blobs = manifest_blobs(raw)
        base = self._base(name)
        for digest, _size in blobs:
            self._blob(base, name, digest)
        self.progress({"status": "verifying sha256 digest"})
        for digest, _size in blobs:
            self._verify(digest)
        self.progress({"status": "writing manifest"})
        self.store.write_manifest(name, raw)
        self.progress({"status": "success"})

    def _base(self, name: Name) -> str:
        return f"http://{name.host}/v2/{name.namespace}/{name.model}"

    def _manifest(self, name: Name) -> bytes:
        if name.host == DEFAULT_HOST:
            raise PullError(
                f'pull model manifest: Get "https://{DEFAULT_HOST}/v2/'
                f'{name.namespace}/{name.model}/manifests/{name.tag}": dial tcp: '
                f"lookup {DEFAULT_HOST}: no such host"
            )
        url = f"{self._base(name)}/manifests/{name.tag}"
        if not self.insecure:
            raise PullError(
                f'pull model manifest: Get "https{url[4:]}": http: server gave '
                "HTTP response to HTTPS client"
            )
        try:
            conn, resp = _request(
                url, headers={"Accept": MANIFEST_ACCEPT, "User-Agent": USER_AGENT}
            )
        except PullError as ex:
            raise PullError(f"pull model manifest: {ex.message}") from ex
        try:
            body = resp.read()
        finally:
            conn.close()
        if resp.status == 404:
            raise PullError("pull model manifest: file does not exist")
        if resp.status >= 400:
            raise PullError(f"pull model manifest: {resp.status}: {body[:200]!r}")
        return body

    def _blob(self, base: str, name: Name, digest: str) -> None:
        status = f"pulling {digest.split(':', 1)[1][:12]}"
        path = self.store.blob_path(digest)
        if path.exists():
            size = path.stat().st_size
            self.progress(
                {"status": status, "digest": digest, "total": size, "completed": size}
            )
            return
        url = f"{base}/blobs/{digest}"
        partial = path.with_name(path.name + "-partial")
        # Like Ollama: the parts of an interrupted download are resumed, and
        # then the HEAD is skipped (the parts know the size).
        parts = load_parts(partial)
        if parts:
            total = sum(p.size for p in parts)
        else:
            total = self._head(url)
            size = part_size(total, self.part_bytes)
            parts = [
                Part(i, start, min(size, total - start), 0)
                for i, start in enumerate(range(0, total, size))
            ]
        room = self.store.room()
        if room is not None and total - sum(p.completed for p in parts) > room:
            raise PullError(f"write {partial}: no space left on device")
        data_url = self._resolve(url)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != total:
                os.ftruncate(fd, total)
            save_parts(partial, parts)
            with ThreadPoolExecutor(max_workers=MAX_PARTS) as pool:
                jobs = [
                    pool.submit(self._part, data_url, fd, part)
                    for part in parts
                    if part.completed < part.size
                ]
                last_sent = last_saved = 0.0
                while not all(j.done() for j in jobs):
                    now = time.monotonic()
                    if now - last_sent >= PROGRESS_EVERY_S:
                        self._report(status, digest, total, _completed(parts))
                        last_sent = now
                    if now - last_saved >= SAVE_EVERY_S:
                        save_parts(partial, parts)
                        last_saved = now
                    time.sleep(0.01)
                for job in jobs:
                    job.result()
        finally:
            os.close(fd)
            if partial.exists():
                save_parts(partial, parts)
        self._report(status, digest, total, _completed(parts))
        os.replace(partial, path)
        for part in parts:
            _part_file(partial, part.n).unlink(missing_ok=True)

    def _report(self, status: str, digest: str, total: int, completed: int) -> None:
        self.progress(
            {"status": status, "digest": digest, "total": total, "completed": completed}
        )

    def _head(self, url: str) -> int:
        conn, resp = _request(url, "HEAD", {"User-Agent": USER_AGENT})
        conn.close()
        if resp.status == 404:
            raise PullError("file does not exist")
        if resp.status >= 400:
            raise PullError(f"{resp.status}: HEAD {url}")
        return int(resp.getheader("Content-Length") or 0)

    def _resolve(self, url: str) -> str:
        """The resolve GET: follow same-host redirects, then read `Location`."""
        for _ in range(10):
            conn, resp = _request(url, headers={"User-Agent": USER_AGENT})
            location = resp.getheader("Location")
            conn.close()
            if resp.status in (301, 302, 303, 307, 308) and location:
                target = urllib.parse.urljoin(url, location)
                if urllib.parse.urlsplit(target).hostname != (
                    urllib.parse.urlsplit(url).hostname
                ):
                    return target
                url = target
                continue
            if resp.status not in (200, 307):
                raise PullError(f"unexpected status code {resp.status}")
            if not location:
                raise PullError("http: no Location header in response")
            return urllib.parse.urljoin(url, location)
        raise PullError("stopped after 10 redirects")

    def _part(self, url: str, fd: int, part: Part) -> None:
        """The part's missing bytes, written at their offset (`completed` counts
        only bytes already written, so a saved part never claims more)."""
        first = part.offset + part.completed
        last = part.offset + part.size - 1
        conn, resp = _request(
            url,
            headers={
                "Range": f"bytes={first}-{last}",
                "User-Agent": "Go-http-client/1.1",
            },
        )
        want, offset = last - first + 1, first
        try:
            # Like Ollama: the status is not checked; exactly `want` bytes are
            # copied to the part's offset.
            while want > 0:
                self._throttle(min(want, READ_BYTES))
                chunk = resp.read(min(want, READ_BYTES))
                if not chunk:
                    raise PullError(f"unexpected EOF reading {url}")
                written = os.pwrite(fd, chunk, offset)
                offset += written
                want -= written
                part.completed += written
                self.fetched += written
        except OSError as ex:
            raise PullError(f"write: {ex.strerror or ex}") from ex
        finally:
            conn.close()

    def _throttle(self, count: int) -> None:
        """Hold a part back so that all of them together keep to `rate`."""
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._free_at = max(self._free_at, now) + count / self.rate
            wait = self._free_at - now
        time.sleep(max(0.0, wait))

    def _verify(self, digest: str) -> None:
        path = self.store.blob_path(digest)
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        got = "sha256:" + h.hexdigest()
        if got != digest:
            path.unlink(missing_ok=True)
            raise PullError(
                f"digest mismatch, file must be downloaded again: want {digest}, "
                f"got {got}"
            )
