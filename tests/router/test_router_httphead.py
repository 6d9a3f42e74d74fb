"""httphead: the request-head parser of the router's worker (pure, no sockets).

The same cases run against the real worker over sockets in
test_router_frontdoor.py; here each rule is pinned down one by one.
"""

from __future__ import annotations

import io

import pytest

from herd.router.http.httphead import (
    CHUNKED,
    MAX_HEADERS,
    MAX_LINE,
    HeaderBlock,
    HeadError,
    body_framing,
    parse_request_line,
    read_fields,
    split_head,
)


def block(raw: bytes) -> HeaderBlock:
    """Fields read as the worker reads a head that is still arriving."""
    return HeaderBlock(read_fields(io.BytesIO(raw)))


def refused(raw: bytes) -> HeadError:
    with pytest.raises(HeadError) as info:
        block(raw)
    return info.value


def framing(raw: bytes, version: str = "HTTP/1.1") -> int | None:
    fields = b"Host: x\r\n" + (raw + b"\r\n" if raw else b"")
    return body_framing(block(fields + b"\r\n"), version)


def test_parses_what_pywsgi_and_gunicorn_use():
    h = block(
        b"Host: x:1\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
        b"X-Empty:\r\nX-Pad:  a b \t\r\nAuthorization: Bearer t\r\n\r\nBODY"
    )
    assert h.status == ""
    assert h.get("content-length") == "12" and h.getheader("HOST") == "x:1"
    assert h.typeheader == "application/json"
    assert h.get("x-pad") == "a b" and h.get("x-empty") == ""
    assert list(h.headers)[0] == "Host: x:1\r\n"
    del h["Content-Length"]
    assert h.get("content-length") is None and "host" in h
    assert ("Authorization", "Bearer t") in h.items()
    assert block(b"\r\n").items() == []
    assert block(b"A: b\n\n").get("a") == "b"  # bare LF line ends


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"X: a\r\n folded\r\n\r\n", "obsolete line folding"),
        (b"X: a\r\n\tfolded\r\n\r\n", "obsolete line folding"),
        (b" X: a\r\n\r\n", "obsolete line folding"),
        (b"Content-Length : 5\r\n\r\n", "whitespace between header name and colon"),
        (b"Content-Length\t: 5\r\n\r\n", "whitespace between header name and colon"),
        (b"no colon here\r\n\r\n", "header line without a colon"),
        (b"X Y: v\r\n\r\n", "invalid character in a header name"),
        (b"X\x00Y: v\r\n\r\n", "invalid character in a header name"),
        (b"X(Y): v\r\n\r\n", "invalid character in a header name"),
        (b"\xe4: v\r\n\r\n", "invalid character in a header name"),
        (b": v\r\n\r\n", "invalid character in a header name"),
        (b"X: a\x01b\r\n\r\n", "control character in a header value"),
        (b"X: a\x00b\r\n\r\n", "control character in a header value"),
        (b"X: a\rb\r\n\r\n", "control character in a header value"),
        (b"X: a\x7f\r\n\r\n", "control character in a header value"),
        (b"X: a\r\r\n\r\n", "control character in a header value"),
    ],
)
def test_refuses_malformed_fields(raw, reason):
    error = refused(raw)
    assert (error.status, error.reason) == (400, reason)


def test_a_name_seen_before_still_needs_its_colon():
    assert block(b"X-Note: v\r\n\r\n").get("x-note") == "v"
    assert refused(b"X-Note\r\n\r\n").reason == "header line without a colon"


def test_allows_tab_and_obs_text_in_values():
    assert block(b"X: a\tb \xe4\r\n\r\n").get("x") == "a\tb \xe4"


def test_caps_line_count_and_whole_head():
    assert refused(b"A: " + b"x" * MAX_LINE + b"\r\n\r\n").status == 431
    many = b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n"
    assert refused(many).reason == "too many header fields"
    lines = b"".join(b"H%d: %s\r\n" % (i, b"v" * 8000) for i in range(9)) + b"\r\n"
    assert refused(lines).reason == "request header block too large"
    assert read_fields(io.BytesIO(b"A: b\r\n\r\n"), budget=8) == "A: b\r\n"
    with pytest.raises(HeadError):
        read_fields(io.BytesIO(b"A: bcdef\r\n\r\n"), budget=8)
    # The same caps when the whole head was in memory at once.
    with pytest.raises(HeadError, match="too large"):
        HeaderBlock("A: b\r\n" * 12000)
    with pytest.raises(HeadError, match="too long"):
        HeaderBlock("A: " + "b" * MAX_LINE + "\r\n")
    with pytest.raises(HeadError, match="too many"):
        HeaderBlock("A: b\r\n" * (MAX_HEADERS + 1))
    # End of input before the blank line: nothing to answer (status 0).
    assert refused(b"X: a\r\n").status == 0


def test_long_runs_of_spaces_are_refused_in_linear_time():
    # A quadratic regex would take seconds on these (16 KiB lines).
    for line in ("X:" + " " * 16000 + "\x01\r\n", "X: " + "a " * 8000 + "\x01\r\n"):
        with pytest.raises(HeadError):
            HeaderBlock(line * 3)


def test_split_head():
    assert split_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY") == 27
    assert split_head(b"GET / HTTP/1.0\n\nX") == 16
    assert split_head(b"GET / HTTP/1.0\r\n\r\n") == 18
    assert split_head(b"GET / HTTP/1.1\r\nHost: x\r\n") == 0


def test_request_line():
    assert parse_request_line("GET /a?b=c HTTP/1.1\r\n") == (
        "GET",
        "/a?b=c",
        "HTTP/1.1",
    )
    assert parse_request_line("POST http://h/x HTTP/1.0\n")[2] == "HTTP/1.0"
    for bad in (
        b"GET /x\r\n",
        b"GET  /x HTTP/1.1\r\n",
        b"GET /x  HTTP/1.1\r\n",
        b"GET /x HTTP/1.1 \r\n",
        b"GET /x HTTP/1.1 extra\r\n",
        b"GET /a b HTTP/1.1\r\n",
        b"GET /a\tb HTTP/1.1\r\n",  # (no whitespace of any kind in a target)
        b"GET /a\x0bb HTTP/1.1\r\n",
        b"G(T /x HTTP/1.1\r\n",
        b"GET /x\x00 HTTP/1.1\r\n",
        b"GET /x HTTP/1.1\rX\r\n",
        b"GET /x http/1.1\r\n",
        b'{"model":"m","prompt":"p"}\r\n',
    ):
        with pytest.raises(HeadError) as info:
            parse_request_line(bad.decode("latin-1"))
        assert info.value.status == 400, bad
    with pytest.raises(HeadError) as info:
        parse_request_line("PRI * HTTP/2.0\r\n")
    assert info.value.status == 505


def test_framing_lengths():
    assert framing(b"") is None
    assert framing(b"Content-Length: 0") == 0
    assert framing(b"Content-Length: 82") == 82
    assert framing(b"Content-Length: 82, 82") == 82
    assert framing(b"Content-Length: 82\r\nContent-Length: 82") == 82
    for bad in (
        b"+82",
        b"-1",
        b"8_2",
        b"8 2",
        b"0x52",
        b"82.0",
        b"\xb2",
        b"",
        b"82, 5",
        b"1" * 19,
    ):
        with pytest.raises(HeadError, match="malformed Content-Length"):
            framing(b"Content-Length: " + bad)
    with pytest.raises(HeadError, match="malformed Content-Length"):
        framing(b"Content-Length: 82\r\nContent-Length: 5")


def test_framing_transfer_encoding():
    assert framing(b"Transfer-Encoding: chunked") == CHUNKED
    assert framing(b"Transfer-Encoding: Chunked") == CHUNKED
    for bad in (
        b"Transfer-Encoding: chunked\r\nContent-Length: 5",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked, identity",
        b"Transfer-Encoding: identity",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: chunked, chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: xchunked",
        b"Transfer-Encoding: ",
    ):
        with pytest.raises(HeadError) as info:
            framing(bad)
        assert info.value.status == 400, bad
    with pytest.raises(HeadError, match="HTTP/1.0"):
        framing(b"Transfer-Encoding: chunked", "HTTP/1.0")


def test_framing_host():
    with pytest.raises(HeadError, match="Host"):
        body_framing(block(b"\r\n"), "HTTP/1.1")
    with pytest.raises(HeadError, match="Host"):
        body_framing(block(b"Host: a\r\nHost: b\r\n\r\n"), "HTTP/1.0")
    assert body_framing(block(b"\r\n"), "HTTP/1.0") is None
