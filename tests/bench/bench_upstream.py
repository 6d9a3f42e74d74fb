"""Upstream benchmark: CPU per request of the router's leg to a node, alone.

    python tests/bench/bench_upstream.py [--requests 20000] [--repeat 3]

Needs `nginx` (Debian: `apt-get install -y nginx-light`). nginx on a free
loopback port answers POST /api/chat with the fixed reply bench_router.py
uses (a node that costs nothing). In one gevent process (monkey-patched, as
the router's worker is) it then sends the router's request for a
non-streaming chat N times, one after the other on a kept-alive connection:

- floor: a bare socket loop (one send of a prebuilt request, reads until the
  Content-Length is in), the least any HTTP client can do on this stack;
- upstream: `Upstream(swept=True).open` + `Reply.lines` + `Reply.close`, as
  `Forwarder._attempt` drives them (with the first line parsed as JSON).

It prints the CPU time per request of each (process user + system time) and
the ratio upstream / floor. `--repeat N` interleaves N runs of each and keeps
each one's best (for shared machines). Everything listens on 127.0.0.1 only,
nginx is stopped at the end, and every loop is bounded by --requests.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import (  # noqa: E402
    CHAT_BODY,
    free_port,
    nginx_conf,
    wait_http,
)

from herd.router.routing.proxy import Upstream  # noqa: E402

#: The body the router sends for a non-streaming chat (folded from a stream).
SENT = CHAT_BODY.replace('"stream": false', '"stream":true').encode()


def start_nginx(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(tmp, port))
    proc = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/api/version")
    return proc, port


def floor(port: int, count: int) -> float:
    """CPU seconds for `count` bare request/response exchanges."""
    request = (
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (port, len(SENT), SENT)
    )
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.process_time()
    for _ in range(count):
        sock.send(request)
        data = sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
        json.loads(body)
    used = time.process_time() - start
    sock.close()
    return used


def upstream(port: int, count: int) -> float:
    """CPU seconds for `count` requests through Upstream, as the router sends."""
    url = f"http://127.0.0.1:{port}"
    client = Upstream(lambda u: u == url, swept=True)
    loads = json.loads
    start = time.process_time()
    for _ in range(count):
        reply = client.open(url, "POST", "/api/chat", SENT, network_s=10.0)
        assert reply.status == 200
        lines = reply.lines()
        first = next(ln for ln in lines if ln.strip())
        loads(first)
        reply.close()
    used = time.process_time() - start
    client.close()
    return used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="herd-bench-up-") as tmp:
        proc, port = start_nginx(Path(tmp))
        try:
            upstream(port, 200)  # warm up (imports, first connection)
            floor(port, 200)
            best = {"floor": float("inf"), "upstream": float("inf")}
            for _ in range(args.repeat):
                best["floor"] = min(best["floor"], floor(port, args.requests))
                best["upstream"] = min(best["upstream"], upstream(port, args.requests))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    per = {k: v * 1e6 / args.requests for k, v in best.items()}
    print(f"requests per run: {args.requests}, best of {args.repeat}")
    print(f"floor     {per['floor']:7.1f} us/req CPU")
    print(f"upstream  {per['upstream']:7.1f} us/req CPU")
    print(f"ratio upstream/floor: {per['upstream'] / per['floor']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
