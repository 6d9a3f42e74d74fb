"""The request head: request line, header block and body framing (RFC 9112).

Pure parsing, used by the router's gunicorn worker (herd/router/http/worker.py) on
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
# (Possessive: OWS and a value may both hold spaces, and without it a failed
# match would retry every split of a long run of spaces, in quadratic time.)
_FIELD = re.compile(rf"([{_TCHAR}]+):[ \t]*+([^\x00-\x08\x0a-\x1f\x7f]*)\r?\n")
#: Control characters but HTAB and LF (searched for once CRLF is made LF).
_CTL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TOKEN = re.compile(rf"[{_TCHAR}]+")
_FRAMING_FIELDS = frozenset(("content-length", "transfer-encoding", "host"))
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))
_VERSIONS = {
    "HTTP/1.1\r\n": "HTTP/1.1",
    "HTTP/1.1\n": "HTTP/1.1",
    "HTTP/1.0\r\n": "HTTP/1.0",
    "HTTP/1.0\n": "HTTP/1.0",
}
#: Field names already seen valid, with their lower-case form (clients send
#: the same few names on every request; bounded, as names come from clients).
_KEYS: dict[str, str] = {}
_KEYS_MAX = 1024


class HeadError(Exception):
    """A request head the router refuses: `status` to answer, fixed `reason`.

    Status 0: the client closed the connection mid-head (nothing to answer).
    """

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_request_line(line: str) -> tuple[str, str, str]:
    """(method, target, version) of a request line (latin-1 text up to its LF)."""
    parts = line.split(" ")
    if len(parts) == 3:  # the usual case, checked without the regex
        method, target, tail = parts
        version = _VERSIONS.get(tail)
        if (
            version
            and target
            and (method in _METHODS or _TOKEN.fullmatch(method))
            # (No control character, HTAB included; obs-text, unusual in a
            # target, is decided by the regex below.)
            and target.isprintable()
        ):
            return method, target, version
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise HeadError(400, "malformed request line")
    method, target, major, minor = match.groups()
    if major != "1" or minor not in "01":
        raise HeadError(505, "HTTP version not supported")
    return method, target, f"HTTP/1.{minor}"


def split_head(data: bytes) -> int:
    """Length of the request head at the start of `data` (request line, fields
    and blank line), or 0 when `data` does not hold a whole one."""
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0:
        return lf + 2 if lf >= 0 else 0
    return crlf + 3 if lf < 0 or crlf < lf else lf + 2


def read_fields(fp: Any, budget: int = MAX_HEAD) -> str:
    """The field lines from `fp` up to the blank line, as latin-1 text (without
    the blank line), within the line, count and `budget` caps."""
    lines: list[bytes] = []
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HeadError(431, "header line too long")
        budget -= len(line)
        if budget < 0:
            raise HeadError(431, "request header block too large")
        if line == b"\r\n" or line == b"\n":
            return b"".join(lines).decode("latin-1")
        if not line.endswith(b"\n"):
            raise HeadError(0, "connection closed inside the header block")
        if len(lines) >= MAX_HEADERS:
            raise HeadError(431, "too many header fields")
        lines.append(line)


def _field_error(text: str) -> HeadError:
    """Why a block of field lines did not match (worked out on the error path)."""
    for line in text.splitlines(keepends=True):
        if _FIELD.fullmatch(line):
            continue
        if line[:1] in " \t":
            return HeadError(400, "obsolete line folding")
        name, sep, _ = line.partition(":")
        if not sep:
            return HeadError(400, "header line without a colon")
        if name != name.rstrip(" \t"):
            return HeadError(400, "whitespace between header name and colon")
        if not _TOKEN.fullmatch(name):
            return HeadError(400, "invalid character in a header name")
        break
    return HeadError(400, "control character in a header value")


class HeaderBlock:
    """A request's header fields, parsed from their lines (`text`: latin-1,
    each line ending in LF, no blank line). Raises `HeadError` on anything
    malformed or over a cap.

    Offers exactly what pywsgi and gunicorn use of a header message (`get`,
    `getheader`, `__delitem__`, `items`, `headers`, `typeheader`, `status`).
    """

    __slots__ = ("fields", "first", "framing", "status")

    def __init__(self, text: str = ""):
        self.status = ""
        if len(text) > MAX_LINE:
            if len(text) > MAX_HEAD:
                raise HeadError(431, "request header block too large")
            if any(len(line) > MAX_LINE for line in text.split("\n")):
                raise HeadError(431, "header line too long")
        plain = text.replace("\r\n", "\n")
        # (Without LF and HTAB, a printable block has no control character:
        # one pass in C. Anything else, obs-text included, takes the regex.)
        if (
            not plain.replace("\n", "").replace("\t", "").isprintable()
            and _CTL.search(plain) is not None
        ):
            raise _field_error(text)
        lines = plain.split("\n")
        if len(lines) > MAX_HEADERS + 1:  # each line ends in LF: one more part
            raise HeadError(431, "too many header fields")
        fields: list[tuple[str, str]] = []
        first: dict[str, str] = {}
        #: The values of Content-Length, Transfer-Encoding and Host, by
        #: lower-case name, in arrival order.
        framing: dict[str, list[str]] = {}
        keys = _KEYS
        for line in lines[:-1]:
            name, sep, value = line.partition(":")
            key = keys.get(name)
            if key is None or not sep:
                if not sep or _TOKEN.fullmatch(name) is None:
                    raise _field_error(text)
                key = name.lower()
                if len(keys) < _KEYS_MAX:
                    keys[name] = key
            value = value.strip(" \t")
            fields.append((name, value))
            if key not in first:
                first[key] = value
                if key in _FRAMING_FIELDS:
                    framing[key] = [value]
            elif key in _FRAMING_FIELDS:
                framing[key].append(value)
        #: (name, value) pairs in arrival order (read-only use).
        self.fields = fields
        #: The first value of each field, by lower-case name (read-only use).
        self.first = first
        self.framing = framing

    def get(self, name: str, default: Any = None) -> Any:
        return self.first.get(name.lower(), default)

    getheader = get

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.first

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        self.fields = [f for f in self.fields if f[0].lower() != key]
        self.first.pop(key, None)

    def items(self) -> list[tuple[str, str]]:
        return list(self.fields)

    @property
    def headers(self) -> Iterator[str]:
        """Raw lines, as pywsgi's environ builder reads them."""
        for key, value in self.fields:
            yield f"{key}: {value}\r\n"

    @property
    def typeheader(self) -> str | None:
        return self.first.get("content-type")


def body_framing(head: HeaderBlock, version: str) -> int | None:
    """How the request body is delimited (RFC 9112 §6): its length in bytes,
    `CHUNKED`, or None for no body. Raises `HeadError` (400) for anything a
    server and a proxy in front of it could read differently."""
    framing = head.framing  # values come without surrounding OWS
    hosts = framing.get("host")
    if len(hosts) > 1 if hosts else version == "HTTP/1.1":
        raise HeadError(400, "an HTTP/1.1 request needs exactly one Host field")
    codings = framing.get("transfer-encoding")
    lengths = framing.get("content-length")
    if codings is not None:
        if lengths is not None:
            raise HeadError(400, "both Content-Length and Transfer-Encoding")
        if version != "HTTP/1.1":
            raise HeadError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if codings != ["chunked"] and [
            coding.lower() for coding in _elements(codings)
        ] != ["chunked"]:
            raise HeadError(400, "Transfer-Encoding other than a single chunked")
        return CHUNKED
    if lengths is None:
        return None
    if len(lengths) > 1 or "," in lengths[0]:
        lengths = _elements(lengths)
    first = lengths[0]
    # (herd.digits.decimal's rule, inlined: this runs for every request.)
    if not (
        0 < len(first) <= MAX_LENGTH_DIGITS and first.isascii() and first.isdigit()
    ) or lengths.count(first) != len(lengths):
        raise HeadError(400, "malformed Content-Length")
    return int(first)


def _elements(values: list[str]) -> list[str]:
    """The elements of a comma-separated list field (each of its values), each
    without surrounding OWS; empty ones kept."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip(" \t") for part in value.split(","))
    return out
