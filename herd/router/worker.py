"""The gunicorn worker class for the router: gevent's pywsgi with a lean header parser.

gunicorn's `gevent_pywsgi` worker parses request headers with
`http.client.parse_headers`, which runs the `email` package's feed parser: a
third of the worker's own CPU per proxied request. `HeaderBlock` reads the same
header block directly and offers exactly what pywsgi and gunicorn use of it
(`get`, `getheader`, `__delitem__`, `items`, `headers`, `typeheader`,
`status`), with the same limits (64 KiB per line, 100 headers) as http.client.

`LeanHandler` also writes each response's head and its first body chunk in
one `send` (pywsgi sends them separately: one syscall and one TCP segment more
per response, and a client woken twice), and skips gevent's `sendall`
set-up (a `getsockopt` syscall per call) when one `send` takes everything,
and builds no gunicorn access record while gunicorn's access log is off.

Imported only by gunicorn when it loads the worker class (etc/gunicorn.conf.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler

MAX_LINE = 65536
MAX_HEADERS = 100
#: Body chunks up to this size are sent together with the response head.
MERGE_MAX = 65536


class HeaderBlock:
    """A request's headers, read from `fp` up to the blank line."""

    __slots__ = ("_fields", "status")

    def __init__(self, fp: Any):
        self.status = ""
        fields: list[list[str]] = []
        while True:
            line = fp.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self.status = "Line too long"
                break
            if line in (b"\r\n", b"\n", b""):
                break
            if len(fields) >= MAX_HEADERS:
                self.status = "Too many headers"
                break
            text = line.decode("iso-8859-1")
            if text[:1] in " \t" and fields:  # obsolete line folding
                fields[-1][1] += " " + text.strip()
                continue
            name, sep, value = text.partition(":")
            if not sep:
                self.status = "Invalid header line"
                break
            fields.append([name, value.strip()])
        self._fields = fields

    def get(self, name: str, default: Any = None) -> Any:
        name = name.lower()
        for key, value in self._fields:
            if key.lower() == name:
                return value
        return default

    getheader = get

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __delitem__(self, name: str) -> None:
        name = name.lower()
        self._fields = [f for f in self._fields if f[0].lower() != name]

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self._fields]

    @property
    def headers(self) -> Iterator[str]:
        """Raw lines, as pywsgi's environ builder reads them."""
        for key, value in self._fields:
            yield f"{key}: {value}\r\n"

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")


class LeanHandler(PyWSGIHandler):
    """gunicorn's pywsgi handler, with `HeaderBlock` as the header parser."""

    def MessageClass(self, fp: Any, *args: Any) -> HeaderBlock:  # noqa: N802
        return HeaderBlock(fp)

    def log_request(self) -> None:
        """gunicorn's access line, not even built while gunicorn's access log
        is off (herd writes its own: herd.router.accesslog)."""
        if getattr(self.server.log, "access_log_enabled", True):
            super().log_request()

    def _sendall(self, data: Any) -> None:
        """pywsgi's `_sendall`, with one plain `send` first (small responses
        fit the socket buffer: no `getsockopt`, no chunking loop)."""
        sock = self.socket
        try:
            sent = sock.send(data)
            if sent < len(data):
                sock.sendall(memoryview(data)[sent:])
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def _write_with_headers(self, data: Any) -> None:
        """Status line, headers and the first body chunk in one write."""
        if data and len(data) > MERGE_MAX:
            super()._write_with_headers(data)
            return
        self.headers_sent = True
        self.finalize_headers()
        out = bytearray(b"HTTP/1.1 ")
        out += self.status
        out += b"\r\n"
        for header, value in self.response_headers:
            out += header
            out += b": "
            out += value
            out += b"\r\n"
        out += b"\r\n"
        if data:
            if self.response_use_chunked:
                out += b"%x\r\n" % len(data)
                out += data
                out += b"\r\n"
            else:
                out += data
        self._sendall(out)


class RouterWorker(GeventPyWSGIWorker):
    """`worker_class` of the router (etc/gunicorn.conf.py)."""

    wsgi_handler = LeanHandler
