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
   digest check below catches it);
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
import os
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from herd.sim.store import DEFAULT_HOST, Name, SimStore, StoreError, manifest_blobs

MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
USER_AGENT = "ollama/0.33.0 (amd64 linux) Go/go1.24.1"
MIN_PART, MAX_PART, MAX_PARTS = 100_000_000, 1_000_000_000, 16
TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 0.06
Progress = Callable[[dict[str, Any]], None]


class PullError(StoreError):
    """A pull failure (streamed as `{"error": ...}`, or 500 when not streaming)."""

    def __init__(self, message: str):
        super().__init__(500, message)


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
    ):
        self.store = store
        self.progress = progress
        self.insecure = insecure
        self.part_bytes = part_bytes

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
        total = self._head(url)
        room = self.store.room()
        partial = path.with_name(path.name + "-partial")
        if room is not None and total > room:
            raise PullError(f"write {partial}: no space left on device")
        data_url = self._resolve(url)
        size = part_size(total, self.part_bytes)
        parts = [
            (start, min(start + size, total) - 1) for start in range(0, total, size)
        ]
        done = [0] * len(parts)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, total)
            with ThreadPoolExecutor(max_workers=MAX_PARTS) as pool:
                jobs = [
                    pool.submit(self._part, data_url, fd, first, last, done, i)
                    for i, (first, last) in enumerate(parts)
                ]
                last_sent = 0.0
                while not all(j.done() for j in jobs):
                    now = time.monotonic()
                    if now - last_sent >= PROGRESS_EVERY_S:
                        self._report(status, digest, total, sum(done))
                        last_sent = now
                    time.sleep(0.01)
                for job in jobs:
                    job.result()
        finally:
            os.close(fd)
        self._report(status, digest, total, sum(done))
        os.replace(partial, path)

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

    def _part(
        self, url: str, fd: int, first: int, last: int, done: list[int], i: int
    ) -> None:
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
                chunk = resp.read(min(want, 1 << 20))
                if not chunk:
                    raise PullError(f"unexpected EOF reading {url}")
                written = os.pwrite(fd, chunk, offset)
                offset += written
                want -= written
                done[i] += written
        except OSError as ex:
            raise PullError(f"write: {ex.strerror or ex}") from ex
        finally:
            conn.close()

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
