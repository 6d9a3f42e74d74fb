"""The request head: request line, header block and body framing (RFC 9112).

Pure parsing, used by the router's gunicorn worker (herd/router/worker.py) on
every request, before any route or ACL runs. It reads from a buffered binary
file and either returns the parsed head or raises `HeadError`, which carries
the status to answer (400, 414, 431, 505) and a fixed reason text: never any
client bytes, so a reason can be logged and sent back without leaking a
request body that a broken or hostile client put into its head.

Strict on purpose, since whatever the router accepts here decides where one
request ends and the next begins (request smuggling):

- request line `METHOD SP target SP HTTP/1.x`, method a token, target without
  spaces or control characters;
- each field `name ":" OWS value OWS`: the name made of token characters with
  no whitespace before the colon, the value without control characters
  (HTAB and obs-text allowed); obsolete line folding is refused, not joined;
- caps: 8 KiB request line, 16 KiB per field line, 64 KiB for the whole head,
  100 fields;
- framing (`body_framing`): Content-Length is 1*DIGIT (one value, or repeats
  of the same value), Transfer-Encoding is exactly one `chunked` in HTTP/1.1,
  and never both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

#: Longest request line (method, target, version), as nginx and gevent.
MAX_REQUEST_LINE = 8192
#: Longest single header field line.
MAX_LINE = 16384
#: Longest whole request head: request line plus every field line.
MAX_HEAD = 65536
#: Most header fields.
MAX_HEADERS = 100
#: Longest Content-Length value (digits): 10**18 bytes is more than enough.
MAX_LENGTH_DIGITS = 18

#: Body framing: the body is chunked (Transfer-Encoding: chunked).
CHUNKED = -1

_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_REQUEST_LINE = re.compile(
    rf"([{_TCHAR}]+) ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])\r?\n"
)
# name ":" OWS value OWS CRLF; the value may hold HTAB and obs-text, not CTLs.
_FIELD = re.compile(rf"([{_TCHAR}]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)\r?\n")
_TOKEN = re.compile(rf"[{_TCHAR}]+")


class HeadError(Exception):
    """A request head the router refuses: `status` to answer, fixed `reason`."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """(method, target, version) of a request line read up to its LF."""
    match = _REQUEST_LINE.fullmatch(line.decode("latin-1"))
    if match is None:
        raise HeadError(400, "malformed request line")
    method, target, major, minor = match.groups()
    if major != "1" or minor not in "01":
        raise HeadError(505, "HTTP version not supported")
    return method, target, f"HTTP/1.{minor}"


def _field_error(text: str) -> HeadError:
    """Why a field line did not match (only worked out on the error path)."""
    if text[:1] in " \t":
        return HeadError(400, "obsolete line folding in the header block")
    name, sep, _ = text.partition(":")
    if not sep:
        return HeadError(400, "header line without a colon")
    if name != name.rstrip(" \t"):
        return HeadError(400, "whitespace between header name and colon")
    if not _TOKEN.fullmatch(name):
        return HeadError(400, "invalid character in a header name")
    return HeadError(400, "control character in a header value")


class HeaderBlock:
    """A request's header fields, read from `fp` up to the blank line.

    Offers exactly what pywsgi and gunicorn use of a header message (`get`,
    `getheader`, `__delitem__`, `items`, `headers`, `typeheader`, `status`).
    `budget` is what is left of MAX_HEAD after the request line. Raises
    `HeadError` on anything malformed or over a cap, and on end of input
    before the blank line.
    """

    __slots__ = ("_fields", "_first", "framing", "status")

    def __init__(self, fp: Any, budget: int = MAX_HEAD):
        self.status = ""
        fields: list[tuple[str, str]] = []
        first: dict[str, str] = {}
        #: Content-Length, Transfer-Encoding and Host values, lower-cased name.
        framing: list[tuple[str, str]] = []
        while True:
            line = fp.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                raise HeadError(431, "header line too long")
            budget -= len(line)
            if budget < 0:
                raise HeadError(431, "request header block too large")
            if line == b"\r\n" or line == b"\n":
                break
            if not line.endswith(b"\n"):
                raise HeadError(400, "end of input inside the header block")
            if len(fields) >= MAX_HEADERS:
                raise HeadError(431, "too many header fields")
            text = line.decode("latin-1")
            match = _FIELD.fullmatch(text)
            if match is None:
                raise _field_error(text)
            name, value = match.groups()
            value = value.rstrip(" \t")
            fields.append((name, value))
            key = name.lower()
            if key not in first:
                first[key] = value
            if key in _FRAMING_FIELDS:
                framing.append((key, value))
        self._fields = fields
        self._first = first
        self.framing = framing

    def get(self, name: str, default: Any = None) -> Any:
        return self._first.get(name.lower(), default)

    getheader = get

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._first

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        self._fields = [f for f in self._fields if f[0].lower() != key]
        self._first.pop(key, None)

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    @property
    def fields(self) -> list[tuple[str, str]]:
        """(name, value) pairs in arrival order (read-only use)."""
        return self._fields

    @property
    def headers(self) -> Iterator[str]:
        """Raw lines, as pywsgi's environ builder reads them."""
        for key, value in self._fields:
            yield f"{key}: {value}\r\n"

    @property
    def typeheader(self) -> str | None:
        return self._first.get("content-type")


_FRAMING_FIELDS = frozenset(("content-length", "transfer-encoding", "host"))


def body_framing(head: HeaderBlock, version: str) -> int | None:
    """How the request body is delimited (RFC 9112 §6): its length in bytes,
    `CHUNKED`, or None for no body. Raises `HeadError` (400) for anything a
    server and a proxy in front of it could read differently."""
    lengths: list[str] = []
    codings: list[str] = []
    hosts = 0
    for key, value in head.framing:
        if key == "content-length":
            lengths.extend(part.strip(" \t") for part in value.split(","))
        elif key == "transfer-encoding":
            codings.extend(part.strip(" \t").lower() for part in value.split(","))
        else:
            hosts += 1
    if hosts > 1 or (hosts == 0 and version == "HTTP/1.1"):
        raise HeadError(400, "an HTTP/1.1 request needs exactly one Host field")
    if codings:
        if lengths:
            raise HeadError(400, "both Content-Length and Transfer-Encoding")
        if version != "HTTP/1.1":
            raise HeadError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if codings != ["chunked"]:
            raise HeadError(400, "Transfer-Encoding other than a single chunked")
        return CHUNKED
    if not lengths:
        return None
    first = lengths[0]
    if not (
        first.isascii() and first.isdigit() and len(first) <= MAX_LENGTH_DIGITS
    ) or any(other != first for other in lengths):
        raise HeadError(400, "malformed Content-Length")
    return int(first)
