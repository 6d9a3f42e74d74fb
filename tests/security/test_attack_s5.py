"""Regression tests from the session-5 security follow-ups.

A paused worker (SIGSTOP, a VM pause) and the deadlines of its blocking reads;
the names `--bind` gives the router in its Host allow-list; refusals and the
access log; the model name in pass-through OpenAI replies.

Real `herd serve` (gunicorn + gevent) over real loopback sockets.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from herd import hosts
from tests.router.routerproc import (
    Router,
    manifest,
    run_script,
    start_router,
)
from tests.router.test_registry_ranges import served  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e

#: A node nothing listens on (the tests here never reach a node).
NO_NODE = type("S", (), {"name": "n1", "url": "http://127.0.0.1:9"})()


def address(router: Router) -> tuple[str, int]:
    host, port = router.url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def worker_pid(router: Router) -> int:
    """The pid of the router's one gunicorn worker (from gunicorn's log)."""
    (pid,) = re.findall(r"Booting worker with pid: (\d+)", router.log())
    return int(pid)


def read_reply(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 reply with a Content-Length body (b"" on close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


#: A gevent process with one `Deadlines` reader, as a router worker has: it
#: waits (deadline 0.5 s) for data on a socket pair, and a child stops it while
#: it sleeps in the event loop, sends the data at once (well in time), and
#: resumes it only after the deadline. Prints what the reader got.
PAUSED_READER = """
import os, signal, sys, time
import gevent, gevent.socket
from herd.router.http.deadlines import Deadlines

ours, theirs = gevent.socket.socketpair()
deadlines = Deadlines()
rfile = ours.makefile("rb")

def reader():
    current = gevent.getcurrent()
    deadlines.enter(current, time.monotonic() + 0.5, True)
    try:
        data = rfile.peek(1)
    except OSError as ex:
        print("timed out:", ex, flush=True)
        return
    finally:
        deadlines.leave(current)
    print("read", data, flush=True)

greenlet = gevent.spawn(reader)
gevent.sleep(0.05)
if os.fork() == 0:
    time.sleep(0.1)  # the parent is now asleep in epoll_wait
    os.kill(os.getppid(), signal.SIGSTOP)
    time.sleep(0.05)
    theirs.sendall(b"next request")
    time.sleep(0.8)  # the deadline passes while the reader's process is stopped
    os.kill(os.getppid(), signal.SIGCONT)
    os._exit(0)
greenlet.join(3)
os.wait()
"""


def test_paused_process_reads_what_arrived_before_its_deadline():
    """Without the two-sweep rule the first sweep after SIGCONT ran before the
    loop saw the socket (epoll_wait returns EINTR to a stopped process) and
    threw the timeout into a reader whose data had arrived in time."""
    done = run_script(PAUSED_READER)
    assert done.stdout == "read b'next request'\n", done.stdout + done.stderr


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


# -- item 1: a paused worker must not time out data that arrived in time -------


def test_paused_worker_keeps_a_keepalive_connection_whose_request_arrived(
    tmp_path: Path,
):
    """The same through the real router: the worker is stopped; a keep-alive
    client sends its next request well within HERD_KEEPALIVE, and the worker
    resumes only after the keep-alive deadline. The request was in the socket
    before the deadline: it must be answered, not dropped as idle. (Here the
    race was not seen to go wrong even before the fix; the test above forces
    it.)"""
    router = start_router(
        tmp_path / "state",
        manifest([NO_NODE]),
        tmp_path / "router.log",
        extra_env={"HERD_KEEPALIVE": "1"},
    )
    pid = worker_pid(router)
    try:
        with socket.create_connection(address(router), timeout=10) as sock:
            sock.sendall(HEALTHZ)
            assert read_reply(sock).startswith(b"HTTP/1.1 200")
            time.sleep(0.3)  # the worker is now waiting for the next one
            os.kill(pid, signal.SIGSTOP)
            try:
                sock.sendall(HEALTHZ)  # in time: the deadline is 1 s away
                time.sleep(2)  # the deadline passes while the worker sleeps
            finally:
                os.kill(pid, signal.SIGCONT)
            assert read_reply(sock).startswith(b"HTTP/1.1 200")
    finally:
        router.stop()


# -- item 2: a name given to --bind is a name the router answers to -----------


def loopback_name() -> str | None:
    """A name /etc/hosts maps to a loopback address that the router would not
    know anyway (not localhost, not this machine's name)."""
    from herd.hosts import hosts_table
    from herd.router.hostnames import always_known

    for name, addresses in sorted(hosts_table().items()):
        if (
            name not in always_known()
            and ipaddress.ip_address(addresses[0]).is_loopback
        ):
            return name
    return None


def test_the_bind_setting_names_a_known_host(monkeypatch: pytest.MonkeyPatch):
    from herd.router.hostnames import KnownHosts, always_known

    monkeypatch.setenv("HERD_BIND", "Router.Example.:11435")
    assert "router.example" in always_known()
    assert KnownHosts(always_known()).allows("router.example:11435")
    monkeypatch.setenv("HERD_BIND", "[::1]:11435")
    assert not KnownHosts(always_known()).allows("router.example")


def curl_status(url: str, host: str) -> int:
    done = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*"]
        + ["-m", "10", "-H", f"Host: {host}", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(done.stdout or 0)


def test_a_name_given_to_bind_is_in_the_host_allow_list(tmp_path: Path):
    """`herd serve --bind NAME:PORT`: clients that use NAME (in their Host
    header) are answered; other names still get 421."""
    name = loopback_name()
    if name is None:
        pytest.skip("needs a loopback name in /etc/hosts besides localhost")
    # start_router waits for /healthz at http://NAME:PORT (Host: NAME:PORT).
    router = start_router(
        tmp_path / "state", manifest([NO_NODE]), tmp_path / "router.log", host=name
    )
    port = router.url.rsplit(":", 1)[1]
    try:
        address = hosts.lookup(name)
        url = f"http://{address}:{port}/healthz"
        assert curl_status(url, f"{name}:{port}") == 200
        assert curl_status(url, name.upper() + ".") == 200
        assert curl_status(url, f"not-{name}:{port}") == 421
    finally:
        router.stop()


# -- item 3: a flood of refusals cannot flood the log -------------------------


def test_a_flood_of_refusals_logs_a_burst_then_counts(tmp_path: Path):
    """Bad Host values (421, refused by the app) and malformed heads (400,
    refused by the worker) share the refusal log budget: at most a burst (and
    the budget's steady rate) reach the log, and the rest are counted in a
    summary line; every refusal is either logged or counted. Served requests
    in the flood are all logged."""
    from herd.router.runtime import REFUSALS_BURST, REFUSALS_PER_S

    router = start_router(tmp_path / "state", manifest([NO_NODE]), tmp_path / "log")
    bad_host, malformed, answered = 300, 150, 20
    started = time.monotonic()
    try:
        with socket.create_connection(address(router), timeout=10) as sock:
            for _ in range(bad_host):
                sock.sendall(
                    b"GET /fleet/status HTTP/1.1\r\nHost: rebound.example\r\n\r\n"
                )
                assert read_reply(sock).startswith(b"HTTP/1.1 421")
            for _ in range(answered):
                sock.sendall(b"GET /fleet/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert read_reply(sock).startswith(b"HTTP/1.1 200")
        for _ in range(malformed):
            with socket.create_connection(address(router), timeout=10) as sock:
                sock.sendall(b"GET /fleet/status HTTP/1.1\r\nBad Header\r\n\r\n")
                assert read_reply(sock).startswith(b"HTTP/1.1 400")
        elapsed = time.monotonic() - started
    finally:
        router.stop()
    log = router.log()
    logged = log.count(" 421 model=") + log.count("refused a request from")
    counted = sum(
        int(n) for n in re.findall(r" herd\.access refusals-not-logged (\d+) ", log)
    )
    assert logged + counted == bad_host + malformed, log[-3000:]
    assert logged <= REFUSALS_BURST + REFUSALS_PER_S * elapsed + 1
    assert counted > 0
    assert log.count("GET /fleet/status 200 ") == answered


def test_refusals_left_out_are_counted_once_per_interval(monkeypatch):
    """The access log's writer greenlet adds the count of refusals left out
    once per SUMMARY_S (not per refusal), and only when there were some."""
    import io

    import gevent

    from herd.router.observe import accesslog

    monkeypatch.setattr(accesslog, "FLUSH_S", 0.01)
    monkeypatch.setattr(accesslog, "SUMMARY_S", 0.05)
    out = io.StringIO()
    log = accesslog.AccessLog(out, clock=lambda: 0.0)
    stop = [False]
    writer = gevent.spawn(log.run, lambda: stop[0])
    for _ in range(3):
        log.unlogged()
    gevent.sleep(0.2)  # one summary, then quiet intervals: no more lines
    log.unlogged()
    stop[0] = True
    writer.join(5)
    assert out.getvalue() == (
        "1970-01-01T00:00:00Z herd.access refusals-not-logged 3 (over the refusal "
        "log budget; herd_refusals_unrecorded_total)\n"
        "1970-01-01T00:00:00Z herd.access refusals-not-logged 1 (over the refusal "
        "log budget; herd_refusals_unrecorded_total)\n"
    )


# -- item 4: pass-through answers name the model the client asked for ---------


def test_renaming_touches_only_the_model_field():
    """The byte replace that renames the model in a pass-through answer
    cannot reach text inside a JSON string (a model's output quoting JSON)."""
    import json

    from herd.router.routing.openaileg import OpenAIForm, renamer

    content = 'say {"model":"node-id"} and {"model": "node-id"}'
    answer = {"model": "node-id", "choices": [{"message": {"content": content}}]}
    rename = renamer(
        OpenAIForm("/v1/chat/completions", {"model": 'my "alias"'}), answer
    )
    assert rename is not None
    for data in (
        json.dumps(answer).encode(),
        json.dumps(answer, separators=(",", ":")).encode(),
        b"data: " + json.dumps(answer).encode() + b"\n\n",
    ):
        renamed = json.loads(rename(data).removeprefix(b"data: "))
        assert renamed["model"] == 'my "alias"'
        assert renamed["choices"][0]["message"]["content"] == content
    same = OpenAIForm("/v1/chat/completions", {"model": "node-id"})
    assert renamer(same, answer) is None


# -- item 5: a port taken between free_port and the router's bind -------------


def test_start_router_survives_a_port_taken_before_it_binds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The race behind flaky e2e tests under xdist: the first port offered
    is taken (as by another worker) by the time `herd serve` binds it."""
    from tests.router import routerproc

    offered: list[int] = []
    real = routerproc.free_port
    with socket.create_server(("127.0.0.1", 0)) as taken:

        def racy(host: str = "127.0.0.1") -> int:
            port = taken.getsockname()[1] if not offered else real(host)
            offered.append(port)
            return port

        monkeypatch.setattr(routerproc, "free_port", racy)
        router = routerproc.start_router(
            tmp_path / "state", manifest([NO_NODE]), tmp_path / "router.log"
        )
        try:
            assert len(offered) == 2
            assert router.url.endswith(f":{offered[1]}")
            assert router.get("/healthz")[0] == 200
        finally:
            router.stop()


# -- item 6: attack pass on the routes of the last two sessions ---------------


@pytest.mark.parametrize(
    ("header", "status", "want"),
    [
        ("bytes=\xb2-", 200, None),  # `²`: isdigit() yet not int(): was a 500
        ("bytes=0-\xb3", 200, None),
        ("bytes=-\xb9", 200, None),
        ("bytes=" + "9" * 5000 + "-", 416, None),  # over int()'s 4300 digits
        ("bytes=0-" + "9" * 5000, 206, (0, -1)),  # to the end, as `bytes=0-`
        ("bytes=-" + "9" * 5000, 206, (0, -1)),
        ("bytes=0000000000000000000007-9", 206, (7, 9)),
    ],
)
def test_hostile_registry_ranges_never_fail_the_request(
    served,  # noqa: F811 - the fixture
    header,
    status,
    want,
):
    """A `Range` the router cannot read is ignored (200, the whole blob), one
    past the end is 416, never a 500 (each a traceback in the log)."""
    client, url, blob = served
    got = client.simulate_get(url, headers={"Range": header})
    assert got.status_code == status, got.text
    if status == 200:
        assert got.content == blob
    if want is not None:
        first, last = want[0], want[1] % len(blob)
        assert got.content == blob[first : last + 1]


def test_hostile_heartbeat_timestamps_are_refused_not_failed(tmp_path: Path):
    """X-Herd-Timestamp in superscript digits passed `isdigit()` and failed
    `int()`: a 500 (and a traceback) for any caller inside node_networks,
    before any signature was checked. Now a 400 like any malformed stamp."""
    from herd.discovery import fleetkey
    from tests.discovery.agentkit import body, discovery_manifest, make_key, post
    from tests.router.routerproc import start_sim

    static = start_sim("static-a")
    key = make_key(tmp_path)
    text = discovery_manifest([static], tmp_path / "fleet.key")
    router = start_router(tmp_path / "state", text, tmp_path / "router.log")
    try:
        data = body("gpu-x", static.url)
        for stamp in ("\xb2\xb3", "1\xb9", "\xb9" * 12):
            headers = {**fleetkey.sign(key, data, time.time())}
            headers[fleetkey.HEADER_TIMESTAMP] = stamp
            status, doc = post(router.url, data, headers)
            assert status == 400, (stamp, status, doc)
    finally:
        router.stop()
        static.kill()
    assert "Traceback" not in router.log()


# --- Digits that str.isdigit() accepts and int() refuses ---------------------
# '²' (and other Unicode digits) pass isdigit(); int() raises on them, and on
# more than 4300 ASCII digits. Each place that reads a number from a node, a
# manifest or a command line checks ASCII digits of a bounded length first.

SUPERSCRIPT = "\u00b2"


def test_a_node_version_in_unicode_digits_sorts_as_zero():
    from herd.router.api.ollama import _version_key

    assert _version_key(f"0.{SUPERSCRIPT}.1") == (0, 0, 1)
    assert _version_key("1." + "9" * 5000) == (1, 0)
    assert _version_key("0.33.0-rc1") == (0, 33, 0)


@pytest.mark.parametrize("port", [SUPERSCRIPT, "1" + SUPERSCRIPT, "9" * 5000])
def test_unicode_or_huge_ports_are_clear_errors(port):
    from herd.errors import ConfigError
    from herd.node.commands import AgentError, _addr_port
    from herd.router.launch import parse_bind

    with pytest.raises(ConfigError, match="port must be a number"):
        parse_bind(f"127.0.0.1:{port}")
    with pytest.raises(AgentError, match="must be ADDR:PORT"):
        _addr_port(f"10.0.0.2:{port}")


def test_unicode_status_digits_are_a_clear_error():
    from herd.errors import ConfigError
    from herd.ops.tracequery import _status_clause

    assert _status_clause("404") == ("status = ?", [404])
    for text in (f"4{SUPERSCRIPT}4", "600"):
        with pytest.raises(ConfigError, match="expected a code"):
            _status_clause(text)


def test_an_announced_port_in_unicode_digits_falls_back_to_the_default():
    from herd.discovery.announcer import bind_port

    assert bind_port(f"0.0.0.0:1{SUPERSCRIPT}") == 11435
    assert bind_port("0.0.0.0:8080") == 8080
