"""The Ollama calls `herd apply` makes on a node, and nothing else.

`pull` asks the node to fetch a model from the router's registry (`insecure`:
plain HTTP on the LAN) and streams its progress; `copy` gives the pulled
model the short name clients use; `delete` removes a name (Ollama keeps blobs
another name still uses); `warm` loads a model with a keep-alive. Every call
has a connect timeout and a read timeout; errors become `NodeError` with the
node's own message.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from collections.abc import Callable
from typing import Any

CONNECT_TIMEOUT_S = 5.0
#: No byte for this long ends a pull (Ollama sends progress every ~60 ms, but
#: hashing a large blob at the end is silent).
PULL_IDLE_S = 600.0
CALL_TIMEOUT_S = 60.0
#: Loading a big model from disk can take minutes.
WARM_TIMEOUT_S = 900.0


class NodeError(Exception):
    """A node refused or failed a call; `message` is what it said."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NodeAPI:
    """Ollama's model management API on one node (`url`: http://HOST:PORT)."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise NodeError(f"not an http(s) URL: {url}")
        self.url = url
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._netloc, timeout=CONNECT_TIMEOUT_S)
        try:
            conn.connect()
        except OSError as ex:
            conn.close()
            raise NodeError(
                f"cannot connect to {self.url}: {ex.strerror or ex}"
            ) from ex
        conn.sock.settimeout(timeout)
        return conn

    def _send(
        self, method: str, path: str, body: dict[str, Any], timeout: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connect(timeout)
        try:
            conn.request(
                method,
                self._prefix + path,
                body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as ex:
            conn.close()
            raise NodeError(f"{method} {path} on {self.url}: {_reason(ex)}") from ex

    def _call(
        self, method: str, path: str, body: dict[str, Any], timeout: float
    ) -> bytes:
        conn, resp = self._send(method, path, body, timeout)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as ex:
            raise NodeError(f"{method} {path} on {self.url}: {_reason(ex)}") from ex
        finally:
            conn.close()
        if resp.status >= 400:
            raise NodeError(_error_text(data, resp.status))
        return data

    def pull(self, name: str, progress: Callable[[dict[str, Any]], None]) -> None:
        """`POST /api/pull` (streaming) until `success`; raises on an error line."""
        body = {"model": name, "insecure": True, "stream": True}
        conn, resp = self._send("POST", "/api/pull", body, PULL_IDLE_S)
        try:
            if resp.status >= 400:
                raise NodeError(_error_text(resp.read(), resp.status))
            success = False
            for line in resp:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as ex:
                    raise NodeError(
                        f"pull: not JSON from the node: {line[:80]!r}"
                    ) from ex
                if "error" in event:
                    raise NodeError(str(event["error"]))
                success = success or event.get("status") == "success"
                progress(event)
            if not success:
                raise NodeError("pull: the node closed the stream before success")
        except (OSError, http.client.HTTPException) as ex:
            raise NodeError(f"pull from {self.url} interrupted: {_reason(ex)}") from ex
        finally:
            conn.close()

    def copy(self, source: str, destination: str) -> None:
        self._call(
            "POST",
            "/api/copy",
            {"source": source, "destination": destination},
            CALL_TIMEOUT_S,
        )

    def delete(self, name: str) -> None:
        self._call("DELETE", "/api/delete", {"model": name}, CALL_TIMEOUT_S)

    def warm(self, name: str, keep_alive: str) -> None:
        """Load `name` now: an empty generate (an empty embed for embedding models)."""
        alive: Any = int(keep_alive) if keep_alive.lstrip("-").isdigit() else keep_alive
        try:
            self._call(
                "POST",
                "/api/generate",
                {"model": name, "keep_alive": alive, "stream": False},
                WARM_TIMEOUT_S,
            )
        except NodeError as ex:
            if "does not support generate" not in ex.message:
                raise
            self._call(
                "POST",
                "/api/embed",
                {"model": name, "input": "", "keep_alive": alive},
                WARM_TIMEOUT_S,
            )


def _reason(ex: BaseException) -> str:
    if isinstance(ex, socket.timeout | TimeoutError):
        return "timed out"
    return getattr(ex, "strerror", None) or str(ex) or type(ex).__name__


def _error_text(data: bytes, status: int) -> str:
    try:
        doc = json.loads(data)
        if isinstance(doc, dict) and doc.get("error"):
            return str(doc["error"])
    except ValueError:
        pass
    text = data.decode("utf-8", "replace").strip()[:200]
    return f"HTTP {status}" + (f": {text}" if text else "")
