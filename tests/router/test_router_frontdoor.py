"""The router's front door, against the real gunicorn worker over real sockets.

Request smuggling, oversized and slow request heads, slow bodies, the
per-address connection cap, keep-alive and shutdown, chunked bodies, body-free
logs, and no DNS at worker start (herd/router/http/worker.py and its modules).
Small limits are set through the environment, as a sysadmin would.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.router.routerproc import (
    ROOT,
    Router,
    apply,
    manifest,
    start_router,
    start_sim,
)

#: gunicorn's graceful_timeout, from the router's own config.
GRACEFUL_S = int(
    re.search(
        r"^graceful_timeout = (\d+)",
        (ROOT / "etc" / "gunicorn.conf.py").read_text(),
        re.M,
    ).group(1)
)
#: Second request smuggled behind every refused one; its answer must never come.
SMUGGLED = b"GET /fleet/status HTTP/1.1\r\nHost: localhost\r\n\r\n"


# -- helpers ------------------------------------------------------------------


def address(router: Router) -> tuple[str, int]:
    host, port = router.url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def connect(router: Router, source: str = "127.0.0.1", timeout: float = 10) -> Any:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(address(router))
    return sock


def read_all(sock: Any, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends within `timeout`; True if it then closed."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except TimeoutError:
        return data, False
    except OSError:  # reset: closed as well
        return data, True


def exchange(router: Router, raw: bytes, timeout: float = 5) -> tuple[bytes, bool]:
    with connect(router) as sock:
        try:
            sock.sendall(raw)
        except OSError:
            pass
        return read_all(sock, timeout)


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


def worker_rss(router: Router) -> int:
    return sum(p.memory_info().rss for p in psutil.Process(router.proc.pid).children())


def prompt_body(marker: str) -> bytes:
    return json.dumps(
        {"model": "fast", "prompt": f"{marker} tell me", "stream": False}
    ).encode()


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


def post(fields: list[bytes], payload: bytes, line: bytes = b"") -> bytes:
    line = line or b"POST /api/generate HTTP/1.1"
    head = b"".join(f + b"\r\n" for f in [line, b"Host: localhost", *fields])
    return head + b"\r\n" + payload + SMUGGLED


def smuggling_cases(marker: str) -> dict[str, bytes]:
    """Each request the router must refuse (400) without a second answer."""
    b = prompt_body(marker)
    cb = chunked(b)
    n = b"%d" % len(b)
    return {
        "CL with TE": post(
            [b"Content-Length: %d" % len(cb), b"Transfer-Encoding: chunked"], cb
        ),
        "TE with CL": post(
            [b"Transfer-Encoding: chunked", b"Content-Length: " + n], cb
        ),
        "obs-folded TE": post(
            [b"Content-Length: " + n, b"Transfer-Encoding:", b" chunked"], cb
        ),
        "obs-fold": post([b"X-Note: a", b"\tb", b"Content-Length: " + n], b),
        "space before colon": post([b"Content-Length : " + n], b),
        "tab before colon": post([b"Content-Length\t: " + n], b),
        "TE chunked, identity": post([b"Transfer-Encoding: chunked, identity"], cb),
        "TE identity": post(
            [b"Transfer-Encoding: identity", b"Content-Length: " + n], b
        ),
        "TE gzip, chunked": post([b"Transfer-Encoding: gzip, chunked"], cb),
        "TE twice": post(
            [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], cb
        ),
        "TE xchunked": post([b"Transfer-Encoding: xchunked"], cb),
        "TE in HTTP/1.0": post(
            [b"Transfer-Encoding: chunked"], cb, b"POST /api/generate HTTP/1.0"
        ),
        "CL +N": post([b"Content-Length: +" + n], b),
        "CL 1_0": post([b"Content-Length: " + n[:1] + b"_" + n[1:]], b),
        "CL with inner space": post([b"Content-Length:  " + n[:1] + b" " + n[1:]], b),
        "CL hex": post([b"Content-Length: 0x%x" % len(b)], b),
        "CL negative": post([b"Content-Length: -1"], b),
        "CL superscript digit": post([b"Content-Length: \xb2"], b),
        "CL empty": post([b"Content-Length: "], b),
        "CL differing fields": post([b"Content-Length: " + n, b"Content-Length: 5"], b),
        "CL differing list": post([b"Content-Length: " + n + b", 5"], b),
        "space in name": post([b"X Note: v", b"Content-Length: " + n], b),
        "control in name": post([b"X\x01Note: v", b"Content-Length: " + n], b),
        "empty name": post([b": v", b"Content-Length: " + n], b),
        "control in value": post([b"X-Note: a\x01b", b"Content-Length: " + n], b),
        "NUL in value": post([b"X-Note: a\x00b", b"Content-Length: " + n], b),
        "bare CR in value": post([b"X-Note: a\rb", b"Content-Length: " + n], b),
        "line without colon": post([b"X-Note", b"Content-Length: " + n], b),
        "no Host": b"GET /fleet/status HTTP/1.1\r\n\r\n" + SMUGGLED,
        "two Hosts": b"GET /fleet/status HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "HTTP/0.9": b"GET /fleet/status\r\n" + SMUGGLED,
        "double space in request line": b"GET  /fleet/status HTTP/1.1\r\n\r\n",
        "extra word in request line": b"GET /fleet/status HTTP/1.1 "
        + marker.encode()
        + b"\r\nHost: localhost\r\n\r\n",
        "control in method": b"G\x01T /fleet/status HTTP/1.1\r\n"
        + b"Host: localhost\r\n\r\n",
        "bare CR in request line": b"GET /fleet/status HTTP/1.1\rX\r\n"
        + b"Host: localhost\r\n\r\n",
        "tab in request target": b"GET /fleet/status\tX HTTP/1.1\r\n"
        + b"Host: localhost\r\n\r\n",
        "body as request line": b'{"model":"fast","prompt":"'
        + marker.encode()
        + b'"}\r\nHost: localhost\r\n\r\n',
    }


@pytest.fixture
def frontdoor_router(tmp_path: Path) -> Iterator[Any]:
    """Factory: a router (no nodes needed) with the given front-door env."""
    started: list[Router] = []
    sim_stub = type("S", (), {"name": "n1", "url": "http://127.0.0.1:9"})()

    def make(env: dict[str, str] | None = None, text: str | None = None) -> Router:
        n = len(started)
        r = start_router(
            tmp_path / f"state{n}",
            text or manifest([sim_stub]),
            tmp_path / f"router{n}.log",
            extra_env=env,
        )
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


# -- item 10 and 12: smuggling, and no body bytes in logs ----------------------


def test_smuggling_inputs_get_400_and_never_a_second_answer(frontdoor_router):
    router = frontdoor_router()
    wrong = {}
    for name, raw in smuggling_cases("SECRET-MARKER").items():
        data, closed = exchange(router, raw, timeout=5)
        codes = statuses(data)
        if codes != [400] or not closed or b"nodes_up" in data:
            wrong[name] = (codes, closed, data[:120])
    assert not wrong, wrong
    status, _ = router.get("/healthz")
    assert status == 200


def test_refused_requests_never_log_body_bytes(frontdoor_router):
    router = frontdoor_router()
    for raw in smuggling_cases("BODY-SECRET").values():
        exchange(router, raw, timeout=3)
    router.stop()
    log = router.log()
    assert "BODY-SECRET" not in log
    assert "tell me" not in log
    assert "refused a request" in log  # the refusals are logged, body-free


# -- item 8: oversized and slow heads, slow bodies, per-address cap ------------

#: Small limits for the attack tests (set as a sysadmin would, in the env).
ATTACK_ENV = {
    "HERD_HEADER_TIMEOUT": "2",
    "HERD_BODY_TIMEOUT": "2",
    "HERD_WORKER_CONNECTIONS": "100",
    "HERD_CLIENT_CONNECTIONS": "50",
}


def test_oversized_header_blocks_get_431_and_worker_memory_stays_bounded(
    frontdoor_router,
):
    router = frontdoor_router()
    before = worker_rss(router)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], worker_rss(router))
            time.sleep(0.05)

    results: dict[int, tuple[bytes, bool]] = {}

    def attack(i: int, line_size: int) -> None:
        # 98 header lines and never the blank line that ends the head; each
        # attacker from its own loopback address (the per-address cap is
        # another test).
        with connect(router, f"127.0.1.{i + 1}") as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
                for n in range(98):
                    sock.sendall(b"X-Pad-%d: %s\r\n" % (n, b"a" * line_size))
            except OSError:
                pass  # the router gave up on us: read its answer
            results[i] = read_all(sock, 8)

    sampler = threading.Thread(target=sample)
    sampler.start()
    # 40 with 64 KB lines (over the per-line cap), 10 with 8 KB lines (over
    # the whole-head cap after a few lines).
    attackers = [
        threading.Thread(target=attack, args=(i, 65000 if i < 40 else 8000))
        for i in range(50)
    ]
    for t in attackers:
        t.start()
    for t in attackers:
        t.join(60)
    time.sleep(0.3)
    done.set()
    sampler.join()

    wrong = {
        i: (statuses(data), closed)
        for i, (data, closed) in results.items()
        if statuses(data) != [431] or not closed
    }
    assert len(results) == 50 and not wrong, wrong
    # Generous: the attack sent over 250 MB of header lines.
    assert peak[0] - before < 100 * 2**20, (before, peak[0])
    assert router.get("/healthz")[0] == 200


def _dribble(sock: Any, data: bytes, every_s: float = 0.3) -> tuple[bytes, bool]:
    """Send `data` a byte at a time until the router answers or closes."""
    for i in range(len(data)):
        try:
            sock.send(data[i : i + 1])
        except OSError:
            break
        reply, closed = read_all(sock, every_s)
        if reply or closed:
            return reply, closed
    return read_all(sock, 10)


def test_half_open_requests_time_out_and_one_address_cannot_starve_others(
    frontdoor_router,
):
    router = frontdoor_router(ATTACK_ENV)
    # 150 half-open requests from one address, over both the per-address cap
    # (50) and the worker's connections (100).
    half_open = []
    for _ in range(150):
        sock = connect(router, "127.0.0.1")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        half_open.append(sock)
    # A real client from another address is served all the same.
    host, port = address(router)
    conn = http.client.HTTPConnection(
        host, port, timeout=10, source_address=("127.0.0.2", 0)
    )
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    conn.close()
    # Slow-header clients that never stay idle long are cut off by the
    # deadline on the whole head, not by an idle timeout.
    dribbled: list[tuple[bytes, bool]] = []
    slow_head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200

    def dribble() -> None:
        with connect(router, "127.0.0.3") as sock:
            dribbled.append(_dribble(sock, slow_head))

    dribblers = [threading.Thread(target=dribble) for _ in range(3)]
    for t in dribblers:
        t.start()
    answers = [read_all(sock, 15) for sock in half_open]
    for t in dribblers:
        t.join(90)
    for sock in half_open:
        sock.close()

    codes = [statuses(data) for data, _ in answers]
    assert all(closed for _, closed in answers), "half-open requests left open"
    assert codes.count([503]) == 100, "per-address cap: 150 - 50 refused"
    assert codes.count([408]) == 50, "head deadline"
    assert [(statuses(d), c) for d, c in dribbled] == [([408], True)] * 3
    assert router.get("/healthz")[0] == 200


def test_slow_request_bodies_time_out(frontdoor_router):
    router = frontdoor_router(ATTACK_ENV)
    head = (
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\n"
    )
    stalled = connect(router)
    stalled.sendall(head + b'Content-Length: 1000\r\n\r\n{"model":')
    stalled_chunked = connect(router)
    stalled_chunked.sendall(head + b'Transfer-Encoding: chunked\r\n\r\n20\r\n{"mo')
    results = [read_all(stalled, 15), read_all(stalled_chunked, 15)]
    with connect(router) as sock:
        sock.sendall(head + b"Content-Length: 200\r\n\r\n")
        results.append(_dribble(sock, prompt_body("x") + b" " * 150))
    for data, closed in results:
        assert statuses(data) == [408] and closed, data[:200]
        assert b"request body not received within 2 s" in data
    stalled.close()
    stalled_chunked.close()


# -- item 9: keep-alive and shutdown -------------------------------------------


def _get_healthz(sock: Any) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while not data.endswith(b'{"status":"ok"}'):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    assert statuses(data) == [200]


def test_idle_keepalive_connection_is_closed_after_keepalive(frontdoor_router):
    router = frontdoor_router({"HERD_KEEPALIVE": "1"})
    with connect(router) as sock:
        _get_healthz(sock)
        _get_healthz(sock)  # kept alive between requests
        data, closed = read_all(sock, 15)
    assert closed and data == b"", "idle keep-alive connection never closed"


def test_sigterm_is_not_held_by_idle_keepalive_and_streams_finish(tmp_path):
    sim = start_sim("n1", tps=5)
    router = start_router(
        tmp_path / "state",
        manifest([sim]),
        tmp_path / "router.log",
        extra_env={"HERD_KEEPALIVE": "120"},
    )
    try:
        router.wait_nodes_up(1)
        idle = connect(router)
        _get_healthz(idle)
        stream = connect(router)
        body = json.dumps({"model": "fast", "prompt": "tell a long story"}).encode()
        stream.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        first = stream.recv(65536)
        assert statuses(first) == [200]
        router.proc.send_signal(signal.SIGTERM)
        rest, closed = read_all(stream, GRACEFUL_S)
        # The stream in flight ran to its end ...
        assert closed and b'"done":true' in first + rest
        # ... and the idle keep-alive connection did not hold the stop until
        # gunicorn's graceful timeout.
        router.proc.wait(timeout=GRACEFUL_S - 10)
        assert read_all(idle, 1) == (b"", True)
        idle.close()
        stream.close()
    finally:
        router.stop()
        sim.kill()


# -- item 11: chunked request bodies -------------------------------------------


def _curl_chunked(url: str, data: bytes) -> tuple[int, bytes]:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
            "-w",
            "\n%{http_code}",
            url,
        ],
        input=data,
        capture_output=True,
        check=True,
    )
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_chunked_request_bodies_are_read_within_max_body(sims, frontdoor_router):
    router = frontdoor_router(text=manifest([sims("n1")]))
    router.wait_nodes_up(1)
    chat = json.dumps(
        {
            "model": "fast",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        }
    ).encode()
    code, body = _curl_chunked(router.url + "/api/chat", chat)
    assert code == 200, body
    assert json.loads(body)["message"]["role"] == "assistant"

    # Over max_body_mb (1 in the test manifest): 413, chunked or not.
    big = chat[:-1] + b', "pad": "' + b"a" * (3 * 2**19) + b'"}'
    code, body = _curl_chunked(router.url + "/api/chat", big)
    assert code == 413, body

    # Raw: several chunks, a chunk extension and a trailer.
    parts = [chat[:10], chat[10:30], chat[30:]]
    raw = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts[:2])
    raw += b"%x;ext=1\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(parts[2]), parts[2])
    data, _ = exchange(
        router,
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + raw,
        timeout=15,
    )
    assert statuses(data) == [200], data[:300]
    assert b'"assistant"' in data


def test_malformed_chunked_framing_is_400_and_closes(frontdoor_router):
    router = frontdoor_router()
    b = prompt_body("CHUNK-SECRET")
    cases = {
        "non-hex size": b"zz\r\n" + b + b"\r\n0\r\n\r\n",
        "size with space": b"%x \r\n%s\r\n0\r\n\r\n" % (len(b), b),
        "size 0x": b"0x%x\r\n%s\r\n0\r\n\r\n" % (len(b), b),
        "no CRLF after data": b"%x\r\n%sXX0\r\n\r\n" % (len(b), b),
        "size too large": b"f" * 20 + b"\r\n" + b,
        "LF-only size line": b"%x\n%s\r\n0\r\n\r\n" % (len(b), b),
    }
    wrong = {}
    for name, payload in cases.items():
        data, closed = exchange(
            router,
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + payload
            + SMUGGLED,
            timeout=5,
        )
        if statuses(data) != [400] or not closed or b"nodes_up" in data:
            wrong[name] = (statuses(data), closed, data[:200])
    assert not wrong, wrong
    router.stop()
    assert "CHUNK-SECRET" not in router.log()


# -- item 25 (the worker's part): no DNS at worker start -----------------------

NETNS_HELPER = """
import json, os, socket, subprocess, sys, threading, time, urllib.request

state, resolv = sys.argv[1:3]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)
queries = []
stop = threading.Event()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 53))
udp.settimeout(0.2)


def listen():
    while not stop.is_set():
        try:
            queries.append(udp.recvfrom(4096)[0])
        except OSError:
            pass


threading.Thread(target=listen, daemon=True).start()
env = {**os.environ, "HERD_STATE_DIR": state}
proc = subprocess.Popen(
    [sys.executable, "-m", "herd", "serve", "--bind", "127.0.0.2:18080"],
    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
served = False
deadline = time.monotonic() + 60
while not served and time.monotonic() < deadline:
    try:
        with opener.open("http://127.0.0.2:18080/healthz", timeout=30) as reply:
            served = reply.status == 200
    except OSError:
        time.sleep(0.2)
time.sleep(0.5)
proc.terminate()
proc.wait(40)
stop.set()
print(json.dumps({"served": served, "dns_queries": len(queries)}))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="needs root, unshare and ip (a private network namespace)",
)
def test_worker_start_sends_no_dns_query(tmp_path):
    # In a private network namespace whose resolver is a listener of ours,
    # the router (bound to an address /etc/hosts does not name) starts and
    # answers without a single DNS query.
    stub = type("S", (), {"name": "n1", "url": "http://127.0.0.1:9"})()
    state = tmp_path / "state"
    apply(state, manifest([stub], listen="127.0.0.2:18080"))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    helper = tmp_path / "netns_router.py"
    helper.write_text(NETNS_HELPER)
    out = subprocess.run(
        [
            "unshare",
            "--net",
            "--mount",
            sys.executable,
            str(helper),
            str(state),
            str(resolv),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"served": True, "dns_queries": 0}
