"""worker.HeaderBlock: the request-header parser of the router's gunicorn worker."""

from __future__ import annotations

import io

from herd.router.worker import MAX_HEADERS, HeaderBlock


def block(raw: bytes) -> HeaderBlock:
    return HeaderBlock(io.BytesIO(raw))


def test_parses_like_http_client():
    h = block(
        b"Host: x:1\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
        b"X-Folded: a\r\n  b\r\nAuthorization: Bearer t\r\n\r\nBODY"
    )
    assert h.status == ""
    assert h.get("content-length") == "12" and h.getheader("HOST") == "x:1"
    assert h.typeheader == "application/json"
    assert h.get("x-folded") == "a b"
    assert list(h.headers)[0] == "Host: x:1\r\n"
    del h["Content-Length"]
    assert h.get("content-length") is None and "host" in h
    assert ("Authorization", "Bearer t") in h.items()


def test_limits_and_garbage():
    assert block(b"A: " + b"x" * 70000 + b"\r\n\r\n").status == "Line too long"
    many = b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n"
    assert block(many).status == "Too many headers"
    assert block(b"no colon here\r\n\r\n").status == "Invalid header line"
    assert block(b"\r\n").items() == []
