"""A strict, streaming multipart/form-data parser (RFC 7578), for audio uploads.

Parts come out one at a time as (`Part`, chunks): a part's body is an
iterator of byte chunks read from the socket as the caller consumes them, so
an upload of any size passes through a bounded buffer. Anything a lenient
parser would guess about is refused with `MultipartError` (a 400): a missing
or malformed boundary, a body that does not start with it, part headers over
`MAX_HEADER_BYTES`, with control characters (a bare CR or LF would become a
line break in the form sent on to the node) or without a `form-data`
Content-Disposition naming the field, a field given twice, more than
`MAX_PARTS` parts, and a body that ends before the closing boundary (a
truncated upload).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from herd.errors import InvalidRequest

#: Bytes of one part's header block (Content-Disposition, Content-Type).
MAX_HEADER_BYTES = 8192
#: Parts in one form (file, model, language, prompt, response_format, ...).
MAX_PARTS = 32
#: Bytes read from the client per call.
READ_SIZE = 64 * 1024
#: RFC 2046: 1 to 70 characters from this set, not ending in a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]\Z")
_PARAM = re.compile(
    r';\s*([A-Za-z0-9_*.-]+)\s*=\s*(?:"((?:[^"\\\r\n]|\\.)*)"|([^;\s"]+))\s*'
)


#: Characters no part header may carry (tab aside); CRLF ends each line.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class MultipartError(InvalidRequest):
    """The body is not a well-formed multipart/form-data form (400)."""


@dataclass(frozen=True)
class Part:
    """One form field: its name, and for a file its filename and type."""

    name: str
    filename: str | None = None
    content_type: str | None = None


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a `multipart/form-data` Content-Type; 400 for any other."""
    if not content_type:
        raise MultipartError(
            "Content-Type must be multipart/form-data (send the audio as a form: "
            'curl -F "file=@audio.wav" -F "model=NAME")'
        )
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise MultipartError(
            f"Content-Type must be multipart/form-data, not {kind.strip()[:80]!r}"
        )
    try:
        found = dict(_params(";" + params)) if params.strip() else {}
    except MultipartError:
        found = {}
    boundary = found.get("boundary")
    if not boundary or not _BOUNDARY.match(boundary):
        raise MultipartError("Content-Type: missing or malformed multipart boundary")
    return boundary.encode("ascii")


def _params(text: str) -> Iterator[tuple[str, str]]:
    """`; key=value` parameters (quoted values unescaped); refuses leftovers."""
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _PARAM.match(text, pos)
        if match is None:
            raise MultipartError("malformed header parameters in multipart body")
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        yield match.group(1).lower(), value
        pos = match.end()


class MultipartReader:
    """Reads the parts of one form from `read(n)` (the request body stream)."""

    def __init__(self, read: Callable[[int], bytes], boundary: bytes):
        self._read = read
        self._delimiter = b"\r\n--" + boundary
        self._buf = bytearray()
        self._eof = False
        self._names: set[str] = set()
        self._count = 0
        self._open = False
        self.finished = False
        #: Body bytes read from the client so far.
        self.consumed = 0
        self._start(boundary)

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._read(READ_SIZE)
        if not data:
            self._eof = True
            return False
        self.consumed += len(data)
        self._buf += data
        return True

    def _need(self, size: int) -> None:
        while len(self._buf) < size:
            if not self._fill():
                raise MultipartError(
                    "multipart body is truncated (no closing boundary)"
                )

    def _start(self, boundary: bytes) -> None:
        first = b"--" + boundary
        self._need(len(first) + 2)
        if not self._buf.startswith(first):
            raise MultipartError("multipart body does not start with its boundary")
        del self._buf[: len(first)]
        self._after_delimiter()

    def _after_delimiter(self) -> None:
        """After a delimiter: `--` closes the form, CRLF starts a part."""
        self._need(2)
        mark = bytes(self._buf[:2])
        del self._buf[:2]
        if mark == b"--":
            self.finished = True
        elif mark != b"\r\n":
            raise MultipartError("multipart boundary is not followed by CRLF")

    def parts(self) -> Iterator[tuple[Part, Iterator[bytes]]]:
        """Each part with its body chunks; a part's chunks must be read (or
        dropped with `skip`) before the next part comes."""
        while not self.finished:
            part = self._headers()
            self._open = True
            yield part, self._body()
            if self._open:
                for _ in self._body():
                    pass

    def _headers(self) -> Part:
        self._count += 1
        if self._count > MAX_PARTS:
            raise MultipartError(f"multipart form has more than {MAX_PARTS} parts")
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_HEADER_BYTES:
                raise MultipartError(
                    f"multipart part headers are longer than {MAX_HEADER_BYTES} bytes"
                )
            if not self._fill():
                raise MultipartError("multipart body is truncated (in part headers)")
        if end > MAX_HEADER_BYTES:
            raise MultipartError(
                f"multipart part headers are longer than {MAX_HEADER_BYTES} bytes"
            )
        block = bytes(self._buf[:end])
        del self._buf[: end + 4]
        return self._part(block)

    def _part(self, block: bytes) -> Part:
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            raise MultipartError("multipart part headers are not UTF-8") from None
        if _CONTROL.search(text.replace("\r\n", "")):
            # A bare CR or LF, NUL, ...: what a node's parser would take for a
            # line break or an end must not be passed on in a part header.
            raise MultipartError("multipart part headers contain control characters")
        headers: dict[str, str] = {}
        for line in text.split("\r\n"):
            name, colon, value = line.partition(":")
            name = name.strip().lower()
            if not colon or not name or line[:1] in (" ", "\t") or name in headers:
                raise MultipartError("malformed or repeated multipart part header")
            headers[name] = value.strip()
        disposition = headers.get("content-disposition", "")
        kind, _, rest = disposition.partition(";")
        params = dict(_params(";" + rest)) if rest else {}
        field = params.get("name")
        if kind.strip().lower() != "form-data" or not field:
            raise MultipartError(
                'each multipart part needs Content-Disposition: form-data; name="..."'
            )
        if field in self._names:
            raise MultipartError(f"multipart field '{field[:64]}' is given twice")
        self._names.add(field)
        return Part(field, params.get("filename"), headers.get("content-type"))

    def _body(self) -> Iterator[bytes]:
        """The current part's bytes up to the next delimiter, as they arrive."""
        if not self._open:
            return
        keep = len(self._delimiter) - 1
        while True:
            at = self._buf.find(self._delimiter)
            if at >= 0:
                chunk = bytes(self._buf[:at])
                del self._buf[: at + len(self._delimiter)]
                self._open = False
                if chunk:
                    yield chunk
                self._after_delimiter()
                return
            if len(self._buf) > keep:
                cut = len(self._buf) - keep
                chunk = bytes(self._buf[:cut])
                del self._buf[:cut]
                yield chunk
            if not self._fill():
                self._open = False
                raise MultipartError(
                    "multipart body is truncated (no closing boundary)"
                )


def read_text(chunks: Iterator[bytes], field: str, limit: int = 65536) -> str:
    """A text field's value (UTF-8, at most `limit` bytes)."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise MultipartError(f"form field '{field}' is longer than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError(f"form field '{field}' is not UTF-8 text") from None


def encode_field(boundary: bytes, name: str, value: str) -> bytes:
    """One text field, as the form sent on to a node carries it."""
    return b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (
        boundary,
        _quote(name),
        value.encode("utf-8"),
    )


def file_head(
    boundary: bytes, name: str, filename: str, content_type: str | None
) -> bytes:
    """The head of a file part (its bytes follow, then CRLF)."""
    return (
        b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
        b"Content-Type: %s\r\n\r\n"
        % (
            boundary,
            _quote(name),
            _quote(filename),
            _CONTROL.sub(" ", content_type or "application/octet-stream").encode(),
        )
    )


def closing(boundary: bytes) -> bytes:
    return b"--%s--\r\n" % boundary


def _quote(text: str) -> bytes:
    """A header parameter value: quotes and backslashes escaped, control
    characters (line breaks, NUL, ...) blanked."""
    cleaned = text.replace("\\", "\\\\").replace('"', '\\"')
    return _CONTROL.sub(" ", cleaned).encode("utf-8")
