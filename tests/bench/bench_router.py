"""Router benchmark: the overhead `herd serve` adds over a zero-cost node, and how
many slow streams one gevent worker holds.

    python tests/bench/bench_router.py [--duration 10] [--streams 1000]
    python tests/bench/bench_router.py --duration 6 --streams 0 --workers 2

Needs `nginx` and `wrk` (Debian: `apt-get install -y nginx-light wrk`). Every
process listens on 127.0.0.1 only and is killed at the end; each load run is
bounded by --duration (`--repeat N` interleaves N runs per target and keeps
each one's best, for shared machines). What it does, all in one run:

1. nginx on a free loopback port answers POST /api/chat with a fixed JSON reply
   (and the /api/version, /api/tags, /api/ps answers the health poller needs):
   a node that costs nothing, so the difference is the router.
2. `herd sim --tps 2` on another port: a slow streaming node; and the "floor":
   the router's own gunicorn config and worker class (herd.router.http.worker) with
   a Falcon app answering the fixed reply itself (no proxying): the fastest any
   router on this stack can be on this machine. And the "proxy floor": the same
   stack forwarding each request to nginx over a kept-alive socket, with no
   parsing, decision or trace: what two HTTP exchanges cost on this stack, so
   router / proxy is the share of herd's own work.
3. A manifest with both nodes (clients 127.0.0.0/8) is `herd apply`-ed into a
   temp state dir and `herd serve` runs the router (one gevent worker).
4. wrk (Lua POST body, --latency) measures non-streaming /api/chat direct to
   nginx, to the floor, the proxy floor and through the router at concurrency
   1, 16 and 64:
   req/s, p50/p99/p99.9 and CPU per request, also as a ratio to the floor's
   (`--profile`: py-spy samples the router worker under c16, hot spots printed).
5. With `--workers N` (N > 1) a second router with one worker serves the same
   manifest, and both are measured at c16 and c64: the table shows how req/s
   and CPU per request scale from one worker to N. The load generator gets a
   core of its own only when the machine has more than N cores; otherwise the
   report says that the workers share cores with it.
6. N concurrent streaming /api/chat requests are held open through the router
   to the sim node; router RSS (psutil, master + workers) and errors counted
   (`--streams 0` skips this part).

CPU pinning (default with 2+ cores, needs `taskset`, util-linux): the router
(and the floor) run on the first core, wrk, nginx, the sim node and this
script on the others, so "one gevent worker" gets one whole core instead of
fighting the load generator for it. `--no-pin` lets the OS schedule everything.

For every run it prints req/s, p50/p99 and the CPU time the server under test
used per request (psutil user+system of master + workers, before/after the
run) and its CPU share of one core (100 % = the server was CPU-bound). On a
shared VM even CPU time per request drifts with the neighbours' load: the
floor, measured in the same run, is the control (read router / floor CPU).
Exit status 0 when every target is met, 1 otherwise (the machine is shared:
read the ratios and CPU figures).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

HERD = [sys.executable, "-m", "herd"]
#: How often the stall probe writes its figures (herd.router.observe.stallprobe).
STALL_DUMP_S = 0.5
MODEL, STREAM_MODEL = "bench:latest", "stream:latest"
CHAT_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
)
FIXED_REPLY = json.dumps(
    {
        "model": MODEL,
        "created_at": "2026-11-22T00:00:00.000000000Z",
        "message": {"role": "assistant", "content": "Hello from a zero-cost node."},
        "done": True,
        "done_reason": "stop",
        "total_duration": 1000,
        "load_duration": 100,
        "prompt_eval_count": 5,
        "prompt_eval_duration": 100,
        "eval_count": 7,
        "eval_duration": 100,
    },
    separators=(",", ":"),
)
TAG = {
    "name": MODEL,
    "model": MODEL,
    "modified_at": "2026-11-01T09:30:00Z",
    "size": 1000,
    "digest": "0" * 64,
    "details": {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1B",
        "quantization_level": "Q4_K_M",
    },
}
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  server {{
{listen}
    default_type "application/json; charset=utf-8";
    location = /api/chat {{ return 200 '{chat}'; }}
    location = /api/version {{ return 200 '{{"version":"0.33.0"}}'; }}
    location = /api/tags {{ return 200 '{tags}'; }}
    location = /api/ps {{ return 200 '{ps}'; }}
    location = / {{ default_type text/plain; return 200 'Ollama is running'; }}
  }}
}}
"""


def nginx_conf(tmp: Path, *ports: int) -> str:
    """NGINX_CONF for a zero-cost node listening on each of `ports` (loopback)."""
    return NGINX_CONF.format(
        tmp=tmp,
        listen="\n".join(f"    listen 127.0.0.1:{port};" for port in ports),
        chat=FIXED_REPLY,
        tags=json.dumps({"models": [TAG]}, separators=(",", ":")),
        ps=json.dumps({"models": []}),
    )


WRK_LUA = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  io.write(string.format(
    'RESULT {{"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,' ..
    '"p999_us":%.1f,"non2xx":%d,"errors":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9), summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
"""
FLOOR_APP = """\
import falcon

REPLY = {reply!r}.encode()


class Chat:
    def on_post(self, req, resp):
        req.bounded_stream.read()
        resp.content_type = "application/json; charset=utf-8"
        resp.data = REPLY


app = falcon.App()
app.add_route("/api/chat", Chat())
"""
# The "proxy floor": the same stack (worker class, gunicorn config, Falcon)
# forwarding each request to the zero-cost node over a kept-alive socket and
# answering with its reply. No parsing, no decision, no limits, no trace: what
# any proxy on this stack pays for two HTTP exchanges instead of one. The
# router's cost above it is herd's own work.
PROXY_FLOOR_APP = """\
import socket

import falcon

NODE = ("127.0.0.1", {port})
HEAD = (
    b"POST /api/chat HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n"
    b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n"
)
IDLE = []


def _recv(sock, buf):
    chunk = sock.recv(65536)
    if not chunk:
        raise OSError("node closed the connection")
    return buf + chunk


def _connect():
    sock = socket.create_connection(NODE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(body):
    # (The bench's nginx keeps connections open for 10M requests.)
    sock = IDLE.pop() if IDLE else _connect()
    sock.sendall(HEAD % len(body) + body)
    buf = b""
    while b"\\r\\n\\r\\n" not in buf:
        buf = _recv(sock, buf)
    head, _, rest = buf.partition(b"\\r\\n\\r\\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\\r\\n")[0])
    while len(rest) < length:
        rest = _recv(sock, rest)
    IDLE.append(sock)
    return rest[:length]


class Chat:
    def on_post(self, req, resp):
        resp.content_type = "application/json; charset=utf-8"
        resp.data = exchange(req.bounded_stream.read())


app = falcon.App()
app.add_route("/api/chat", Chat())
"""
MANIFEST = """\
apiVersion: herd/v1
kind: Fleet
metadata:
  name: bench
router:
  listen: 127.0.0.1:{router}
  node_networks: [127.0.0.0/8]
  clients:
    - name: bench
      networks: [127.0.0.0/8]
  limits:
    queue_depth: 100000
    request_timeout_s: 600
nodes:
  - name: zero
    url: http://127.0.0.1:{nginx}
    max_concurrency: 4096
  - name: slow
    url: http://127.0.0.1:{sim}
    max_concurrency: 4096
models:
  - name: {model}
    place:
      nodes: [zero]
  - name: {stream_model}
    place:
      nodes: [slow]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, *, body: bytes | None = None, timeout: float = 30.0) -> None:
    """Poll until `url` answers 200 (POST when `body`), or raise."""
    deadline = time.monotonic() + timeout
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(
                url, data=body, method="POST" if body else "GET"
            )
            req.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as ex:  # noqa: BLE001 - anything means "not yet"
            last = ex
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s: {last}")


@dataclass
class Wrk:
    requests: int
    duration_us: int
    p50_us: float
    p99_us: float
    p999_us: float
    non2xx: int
    errors: int
    #: CPU seconds the server under test used during the run (user + system).
    cpu_s: float = 0.0
    #: The kernel's part of cpu_s (system time: syscalls, and on loopback the
    #: peer's TCP receive work, which runs in the sender's context).
    sys_s: float = 0.0
    #: Share of the machine's CPU time the hypervisor stole during the run.
    steal: float = 0.0
    #: The server's loop stalls during the run (--stalls; stallprobe.diff).
    stalls: dict | None = None

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def cpu_us(self) -> float:
        """Server CPU time per request, in microseconds."""
        return self.cpu_s * 1e6 / self.requests if self.requests else 0.0

    @property
    def sys_us(self) -> float:
        """The kernel's part of cpu_us."""
        return self.sys_s * 1e6 / self.requests if self.requests else 0.0

    @property
    def cpu_share(self) -> float:
        """Server CPU time over the run's wall time (1.0 = one whole core)."""
        return self.cpu_s / (self.duration_us / 1e6)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children."""
    return cpu_split(pid)[0]


def cpu_split(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU time of a process and its live children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    total = system = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
        system += times.system
    return total, system


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat; (0, 0) elsewhere."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def read_stalls(prefix: Path | None) -> dict[str, dict]:
    """The stall probe's latest snapshot of every worker writing `prefix`.*"""
    found: dict[str, dict] = {}
    if prefix is None:
        return found
    for path in prefix.parent.glob(prefix.name + ".*"):
        if path.suffix == ".tmp":
            continue
        try:
            found[path.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def stalls_between(before: dict[str, dict], after: dict[str, dict]) -> dict | None:
    """The probe's figures for one run, summed over the server's workers."""
    from herd.router.observe import stallprobe

    total: dict | None = None
    for name, snap in after.items():
        part = stallprobe.diff(before.get(name), snap)
        if total is None:
            total = part
            continue
        for key in stallprobe.KINDS:
            total[key] = [a + b for a, b in zip(total[key], part[key], strict=True)]
        total["wakeups"] += part["wakeups"]
        total["overshoot_ms"] += part["overshoot_ms"]
        for gen in total["gc"]:
            total["gc"][gen] = [
                a + b for a, b in zip(total["gc"][gen], part["gc"][gen], strict=True)
            ]
        for key in ("gc_ms", "gc_cpu_ms"):
            if key in total and key in part:
                total[key] = [a + b for a, b in zip(total[key], part[key], strict=True)]
        for name, hist in part["runs"].items():
            mine = total["runs"].setdefault(name, [0] * len(hist))
            total["runs"][name] = [a + b for a, b in zip(mine, hist, strict=True)]
            total["run_ms"][name] = (
                total["run_ms"].get(name, 0.0) + part["run_ms"][name]
            )
    return total


def stall_line(stalls: dict | None) -> str:
    """Wake-ups later than 1 and 3 ms by where the time went, and GC pauses."""
    if not stalls:
        return "stalls: no probe data"
    from herd.router.observe.stallprobe import EDGES_MS, KINDS

    over = EDGES_MS.index(1.0) + 1  # buckets above 1 ms
    big = EDGES_MS.index(3.0) + 1
    cpu = stalls.get("gc_cpu_ms", stalls["gc_ms"])
    gcs = " ".join(
        f"g{gen} {sum(hist)}x {stalls['gc_ms'][int(gen)]:.1f} ms "
        f"(cpu {cpu[int(gen)]:.1f})"
        for gen, hist in sorted(stalls["gc"].items())
        if sum(hist)
    )
    counts = " ".join(
        f"{kind} {sum(stalls[kind][over:])}/{sum(stalls[kind][big:])}" for kind in KINDS
    )
    return (
        f"stalls >1/>3 ms: {counts} of {stalls['wakeups']} wake-ups; gc {gcs or 'none'}"
    )


def run_wrk(
    url: str,
    lua: Path,
    conns: int,
    duration: int,
    *,
    server: int | None = None,
    pin: list[str] | None = None,
    probe: Path | None = None,
) -> Wrk:
    """One bounded wrk run; `server` is the pid whose CPU time is measured,
    `probe` the prefix its stall probe writes to (HERD_STALL_PROBE)."""
    threads = 1 if conns == 1 else 2
    cmd = [
        *(pin or []),
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        url,
    ]
    stalls0 = read_stalls(probe)
    before, ticks0 = (cpu_split(server) if server else (0.0, 0.0)), cpu_ticks()
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    after, ticks1 = (cpu_split(server) if server else (0.0, 0.0)), cpu_ticks()
    if probe is not None:
        time.sleep(2 * STALL_DUMP_S)  # the probe's next dump covers the run's end
    stalls = stalls_between(stalls0, read_stalls(probe)) if probe else None
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    stolen, total = ticks1[0] - ticks0[0], ticks1[1] - ticks0[1]
    return Wrk(
        **json.loads(line[len("RESULT ") :]),
        cpu_s=max(after[0] - before[0], 0.0),
        sys_s=max(after[1] - before[1], 0.0),
        steal=stolen / total if total > 0 else 0.0,
        stalls=stalls,
    )


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (gunicorn master + workers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


async def one_stream(port: int, body: bytes, state: dict, timeout: float) -> None:
    """One streaming /api/chat; counts it as ok only when it ends with done:true."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout
        )
    except (TimeoutError, OSError) as ex:
        state["errors"].append(f"connect: {ex!r}")
        return
    try:
        writer.write(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b" ", 2)[1]
        if status != b"200":
            detail = await asyncio.wait_for(reader.read(300), timeout)
            state["errors"].append(f"status {status.decode()}: {detail!r}")
            return
        state["open"] += 1
        state["peak"] = max(state["peak"], state["open"])
        try:
            data = await asyncio.wait_for(reader.read(), timeout)
        finally:
            state["open"] -= 1
        lines = [x for x in data.split(b"\r\n") if x.startswith(b"{")]
        last = json.loads(lines[-1]) if lines else {}
        if last.get("done") is True and "error" not in last:
            state["ok"] += 1
        else:
            state["errors"].append(f"stream ended without done: {data[-200:]!r}")
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as ex:
        state["errors"].append(f"{type(ex).__name__}: {ex}")
    finally:
        writer.close()


async def hold_streams(port: int, count: int, tokens: int, router_pid: int) -> dict:
    body = json.dumps(
        {
            "model": STREAM_MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": "tell me"}],
        }
    ).encode()
    state: dict = {"ok": 0, "open": 0, "peak": 0, "errors": [], "rss_peak": 0.0}
    limit = tokens / 2 * 3 + 60  # 2 tokens/s, with slack; the run is bounded
    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(one_stream(port, body, state, limit)))
        await asyncio.sleep(0.002)  # ~2 s ramp: no thundering SYN flood
    while not all(t.done() for t in tasks):
        state["rss_peak"] = max(state["rss_peak"], rss_mb(router_pid))
        await asyncio.sleep(0.5)
    return state


class Procs:
    """Processes this benchmark started; all are killed on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class Pinning:
    """Which cores the server under test and the load side run on."""

    server: tuple[int, ...]
    load: tuple[int, ...]

    @property
    def on(self) -> bool:
        return bool(self.server)

    def server_cmd(self) -> list[str]:
        return _taskset(self.server)

    def load_cmd(self) -> list[str]:
        return _taskset(self.load)

    def describe(self, workers: int) -> str:
        if not self.on:
            return f"unpinned: {workers} router worker(s), OS scheduling (--no-pin)"
        return (
            f"pinned: router/floor ({workers} worker(s)) on CPU "
            f"{_cpus(self.server)}; wrk, nginx, sim and this script on CPU "
            f"{_cpus(self.load)}"
        )


def _cpus(cores: tuple[int, ...]) -> str:
    return ",".join(str(c) for c in cores)


def _taskset(cores: tuple[int, ...]) -> list[str]:
    return ["taskset", "-c", _cpus(cores)] if cores else []


def choose_pinning(requested: bool, workers: int) -> Pinning:
    """Router worker(s) on their own core(s), the rest for the load side."""
    cores = tuple(sorted(os.sched_getaffinity(0)))
    if not requested:
        return Pinning((), ())
    if len(cores) < 2 or not shutil.which("taskset"):
        print(
            "not pinning: needs 2+ usable cores and taskset (util-linux)",
            file=sys.stderr,
        )
        return Pinning((), ())
    take = max(1, min(workers, len(cores) - 1))
    return Pinning(cores[:take], cores[take:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--streams", type=int, default=1000, help="concurrent streams (0: skip)"
    )
    parser.add_argument(
        "--stream-tokens",
        type=int,
        default=40,
        help="tokens per stream at 2 tokens/s (40: 20 s held open)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="interleaved wrk runs per target and concurrency; the best is kept",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="router gevent workers; above 1, a one-worker router is measured too "
        "and the scaling reported (targets: 1)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the router to its own core (the default with 2+ cores)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--stalls",
        action="store_true",
        help="run the loop-stall probe in the floor and router workers and print "
        "their stalls and GC pauses per run (costs ~1%% of a core)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the router worker during an extra c16 run; print hot spots",
    )
    args = parser.parse_args(argv)
    missing = [tool for tool in ("nginx", "wrk") if not shutil.which(tool)]
    if missing:
        print(
            f"missing {', '.join(missing)}: apt-get install -y nginx-light wrk",
            file=sys.stderr,
        )
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="herd-bench-"))
    procs = Procs()
    # SIGTERM/SIGHUP end the run like Ctrl-C: the `finally` kills everything.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    affinity = os.sched_getaffinity(0)
    try:
        return bench(args, tmp, procs)
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        procs.stop()
        os.sched_setaffinity(0, affinity)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_router(
    procs: Procs, state: Path, port: int, workers: int, pin: Pinning, log, env: dict
) -> subprocess.Popen:
    """`herd serve` of the applied state on `port` with `workers` workers."""
    return procs.start(
        [
            *pin.server_cmd(),
            *HERD,
            "serve",
            "--state-dir",
            str(state),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=log,
        env=env,
    )


def bench(args: argparse.Namespace, tmp: Path, procs: Procs) -> int:
    pin = choose_pinning(args.pin, args.workers)
    mode = pin.describe(args.workers)
    print(f"mode: {mode}", flush=True)
    if pin.on:
        # This script (the stream client, psutil polling) stays off the
        # router's core too.
        os.sched_setaffinity(0, set(pin.load))
    ports = {
        name: free_port()
        for name in ("nginx", "sim", "router", "router1", "floor", "proxy")
    }
    log = open(tmp / "processes.log", "wb")  # noqa: SIM115 - closed with the procs
    # 1. the zero-cost node
    (tmp / "nginx.conf").write_text(nginx_conf(tmp, ports["nginx"]))
    nginx = procs.start(
        [*pin.load_cmd(), "nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
        stdout=log,
        stderr=log,
    )
    # 2. the slow streaming node
    procs.start(
        [
            *pin.load_cmd(),
            *HERD,
            "sim",
            "--port",
            str(ports["sim"]),
            "--models",
            STREAM_MODEL,
            "--tps",
            "2",
            "--tokens",
            str(args.stream_tokens),
        ],
        stdout=log,
        stderr=log,
    )
    direct = f"http://127.0.0.1:{ports['nginx']}"
    wait_http(direct + "/api/version")
    wait_http(f"http://127.0.0.1:{ports['sim']}/api/version")
    # 3. manifest, apply, serve
    manifest = tmp / "fleet.yaml"
    manifest.write_text(
        MANIFEST.format(model=MODEL, stream_model=STREAM_MODEL, **ports)
    )
    state = tmp / "state"
    env = {**os.environ, "HERD_ACCESS_LOG": "0", "HERD_LOG_LEVEL": "warning"}
    probes = {
        name: (tmp / f"stalls-{name}" if args.stalls else None)
        for name in ("direct", "floor", "proxy", "router", "router1")
    }
    router_env = dict(env)
    if args.stalls:
        router_env["HERD_STALL_PROBE"] = str(probes["router"])
    subprocess.run(
        [*HERD, "apply", str(manifest), "--yes", "--state-dir", str(state)],
        check=True,
        capture_output=True,
        env=env,
        timeout=60,
    )
    router_proc = start_router(
        procs, state, ports["router"], args.workers, pin, log, router_env
    )
    routed = f"http://127.0.0.1:{ports['router']}"
    wait_http(routed + "/api/chat", body=CHAT_BODY.encode(), timeout=60)
    print(
        f"nodes up: nginx :{ports['nginx']}, sim :{ports['sim']}; "
        f"router :{ports['router']} (pid {router_proc.pid}, {args.workers} worker(s))",
        flush=True,
    )
    lua = tmp / "chat.lua"
    lua.write_text(WRK_LUA.format(body=CHAT_BODY))
    load = pin.load_cmd()
    run_wrk(routed + "/api/chat", lua, 16, 2, pin=load)  # warm-up (imports, pools)
    results: dict[tuple[str, int], Wrk] = {}
    errors: dict[str, int] = {}
    # The floor: the router's own gunicorn config (worker class, gc tuning,
    # keep-alive, backlog) serving a Falcon app that answers the fixed reply
    # itself, no proxying. The router cannot beat it on this machine.
    from herd.router.commands import gunicorn_conf

    (tmp / "floor_app.py").write_text(FLOOR_APP.format(reply=FIXED_REPLY))
    (tmp / "proxy_app.py").write_text(PROXY_FLOOR_APP.format(port=ports["nginx"]))
    floor = f"http://127.0.0.1:{ports['floor']}"
    proxy = f"http://127.0.0.1:{ports['proxy']}"
    floors = {}
    for name, url, app in (
        ("floor", floor, "floor_app:app"),
        ("proxy", proxy, "proxy_app:app"),
    ):
        floors[name] = procs.start(
            [
                *pin.server_cmd(),
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                str(gunicorn_conf()),
                "--chdir",
                str(tmp),
                "-b",
                url[len("http://") :],
                app,
            ],
            stdout=log,
            stderr=log,
            env={
                **env,
                "HERD_WORKERS": str(args.workers),
                **({"HERD_STALL_PROBE": str(probes[name])} if args.stalls else {}),
            },
        )
        wait_http(url + "/api/chat", body=CHAT_BODY.encode())
        run_wrk(url + "/api/chat", lua, 16, 2, pin=load)  # warm-up
    targets = [
        ("direct", direct, nginx.pid, (1, 16, 64)),
        ("floor", floor, floors["floor"].pid, (1, 16, 64)),
        ("proxy", proxy, floors["proxy"].pid, (1, 16, 64)),
        ("router", routed, router_proc.pid, (1, 16, 64)),
    ]
    if args.workers > 1:
        # The same state served by one worker: the scaling baseline.
        single_env = dict(env)
        if args.stalls:
            single_env["HERD_STALL_PROBE"] = str(probes["router1"])
        single = start_router(procs, state, ports["router1"], 1, pin, log, single_env)
        single_url = f"http://127.0.0.1:{ports['router1']}"
        wait_http(single_url + "/api/chat", body=CHAT_BODY.encode(), timeout=60)
        run_wrk(single_url + "/api/chat", lua, 16, 2, pin=load)  # warm-up
        targets.append(("router1", single_url, single.pid, (16, 64)))
    for conns in (1, 16, 64):
        runs = [(n, u, p) for n, u, p, conc in targets if conns in conc]
        for _, (name, url, pid) in itertools.product(range(args.repeat), runs):
            res = run_wrk(
                url + "/api/chat",
                lua,
                conns,
                args.duration,
                server=pid,
                pin=load,
                probe=probes[name],
            )
            # Under noise (shared CPU) keep each target's best run: the runs are
            # interleaved, so every target had the same chances.
            best = results.get((name, conns))
            if best is None or res.rps > best.rps:
                results[name, conns] = res
            errors[name] = errors.get(name, 0) + res.non2xx + res.errors
            print(
                f"  {name:7} c{conns:<3} {res.rps:9.0f} req/s  p50 "
                f"{res.p50_us / 1000:7.3f} ms  p99 {res.p99_us / 1000:7.3f} ms  "
                f"p99.9 {res.p999_us / 1000:7.3f} ms  "
                f"cpu {res.cpu_us:6.0f} us/req {100 * res.cpu_share:4.0f}%  "
                f"steal {100 * res.steal:3.0f}%  "
                f"non2xx {res.non2xx} errors {res.errors}",
                flush=True,
            )
            if res.stalls is not None:
                print(f"          {stall_line(res.stalls)}", flush=True)
    if args.profile:
        profile(router_proc.pid, routed + "/api/chat", lua, args.duration, tmp, pin)
    streams: dict = {"ok": 0, "peak": 0, "errors": [], "rss_peak": 0.0}
    idle_rss = rss_mb(router_proc.pid)
    if args.streams > 0:
        # After the load runs the health poller may have marked the slow node
        # down (its polls wait behind the load): wait until a short stream
        # gets through.
        probe = {
            "model": STREAM_MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "stream": False,
            "options": {"num_predict": 1},
        }
        wait_http(routed + "/api/chat", body=json.dumps(probe).encode(), timeout=60)
        idle_rss = rss_mb(router_proc.pid)
        print(
            f"holding {args.streams} streams (2 tokens/s, "
            f"{args.stream_tokens} tokens)…",
            flush=True,
        )
        streams = asyncio.run(
            hold_streams(
                ports["router"], args.streams, args.stream_tokens, router_proc.pid
            )
        )
    return report(results, streams, idle_rss, args, sum(errors.values()), mode, pin)


def _worker_pid(master: int) -> int:
    """The (first) gunicorn worker under `herd serve`: a process without children
    (herd serve -> gunicorn master -> workers)."""
    leaves = [
        p for p in psutil.Process(master).children(recursive=True) if not p.children()
    ]
    return leaves[0].pid


def profile(
    master: int, url: str, lua: Path, duration: int, tmp: Path, pin: Pinning
) -> None:
    """Sample the gevent worker with py-spy under c16 load; print the hot frames."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return
    worker = _worker_pid(master)
    raw = tmp / "profile.txt"
    spy_proc = subprocess.Popen(
        [
            *pin.load_cmd(),
            spy,
            "record",
            "--pid",
            str(worker),
            "--format",
            "raw",
            "--rate",
            "250",
            "--duration",
            str(duration),
            "--output",
            str(raw),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run_wrk(url, lua, 16, duration, pin=pin.load_cmd())
        spy_proc.wait(timeout=duration + 30)
    finally:
        if spy_proc.poll() is None:
            spy_proc.kill()
            spy_proc.wait()
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
    print(f"\nprofile ({total} samples; saved {raw}):")
    print("  self%  function")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {100 * n / total:5.1f}  {frame}")
    print("  incl%  herd function")
    herd = [(f, n) for f, n in inclusive.items() if "(herd/" in f or "/herd/" in f]
    for frame, n in sorted(herd, key=lambda kv: -kv[1])[:20]:
        print(f"  {100 * n / total:5.1f}  {frame}")


def _ms(res: Wrk) -> str:
    return (
        f"{res.p50_us / 1000:.3f} / {res.p99_us / 1000:.3f} / {res.p999_us / 1000:.3f}"
    )


def stall_table(results: dict) -> None:
    """The stall probe's histograms: wake-ups of a 1 ms sleep that came late
    by each bucket's overshoot, loop busy + thread waiting, and GC pauses."""
    from herd.router.observe.stallprobe import KINDS, LABELS

    first = LABELS.index("<=1")  # overshoots under 0.5 ms are the loop's normal
    print(
        "\nloop stalls: wake-ups of a 1 ms sleep, by overshoot in ms, as "
        "loop+thread+off (the loop thread ran / another thread held the GIL / "
        "the process was off the CPU: machine noise); counts per run\n"
    )
    print("| target | wake-ups | " + " | ".join(LABELS[first:]) + " | GC n / ms |")
    holders: list[str] = []
    print("|---|---|" + "---|" * (len(LABELS) - first) + "---|")
    for (name, conns), res in sorted(results.items(), key=lambda kv: kv[0][::-1]):
        st = res.stalls
        if not st:
            continue
        cells = [
            "+".join(str(n) for n in bucket)
            for bucket in zip(*(st[kind][first:] for kind in KINDS), strict=True)
        ]
        gcs = sum(sum(h) for h in st["gc"].values())
        print(
            f"| {name} c{conns} | {st['wakeups']} | {' | '.join(cells)} | "
            f"{gcs} / {sum(st['gc_ms']):.1f} |"
        )
        for who, hist in sorted(st["runs"].items()):
            if sum(hist[first - 1 :]) and who != "StallProbe.run":
                runs = " | ".join(str(n) for n in hist[first - 1 :])
                holders.append(
                    f"| {name} c{conns} | {who} | {sum(hist)} | "
                    f"{st['run_ms'][who]:.0f} | {runs} |"
                )
    if holders:
        print(
            "\nwho held the loop: runs of a greenlet between two switches, by "
            "CPU ms on the loop's thread (requests, background greenlets, "
            "hub = the loop's own callbacks)\n"
        )
        print(
            "| target | greenlet | runs | CPU ms | "
            + " | ".join(LABELS[first - 1 :])
            + " |"
        )
        print("|---|---|---|---|" + "---|" * (len(LABELS) - first + 1))
        print(*holders, sep="\n")


def report(
    results: dict,
    streams: dict,
    idle_rss: float,
    args: argparse.Namespace,
    errors: int,
    mode: str,
    pin: Pinning,
) -> int:
    d1, f1, r1 = (results[name, 1] for name in ("direct", "floor", "router"))
    f16, r16, r64 = results["floor", 16], results["router", 16], results["router", 64]
    added_p50 = (r1.p50_us - d1.p50_us) / 1000
    tail = (r1.p99_us - r1.p50_us) / 1000
    cpu_ratio = r16.cpu_us / max(f16.cpu_us, 1e-9)
    count = args.streams
    checks = [
        ("added p50 at c1", f"{added_p50:.3f} ms", "<= 0.5 ms", added_p50 <= 0.5),
        (
            "p99 - p50 at c1 (flat tail)",
            f"{tail:.3f} ms (floor {(f1.p99_us - f1.p50_us) / 1000:.3f})",
            "<= 1 ms",
            tail <= 1.0,
        ),
        (
            "router / floor CPU per request at c16",
            f"{cpu_ratio:.2f}x ({r16.cpu_us:.0f} / {f16.cpu_us:.0f} us)",
            "<= 2.5x",
            cpu_ratio <= 2.5,
        ),
        ("router req/s at c16", f"{r16.rps:.0f}", ">= 3000", r16.rps >= 3000),
        (
            "router p99 at c64",
            f"{r64.p99_us / 1000:.2f} ms",
            "<= 25 ms",
            r64.p99_us / 1000 <= 25,
        ),
    ]
    if count > 0:
        checks += [
            (
                f"{count} streams: completed",
                f"{streams['ok']} (peak open {streams['peak']})",
                f"{count}",
                streams["ok"] == count,
            ),
            (
                "streams: router RSS peak",
                f"{streams['rss_peak']:.0f} MB (idle {idle_rss:.0f})",
                "<= 300 MB",
                0 < streams["rss_peak"] <= 300,
            ),
        ]
    checks.append(
        (
            "errors (wrk + streams)",
            f"{errors + len(streams['errors'])}",
            "0",
            errors + len(streams["errors"]) == 0,
        )
    )
    print(f"\n{mode}\n")
    print(
        "| conc | direct req/s | floor req/s | router req/s | router/floor | "
        "floor p50 / p99 / p99.9 ms | router p50 / p99 / p99.9 ms | "
        "CPU us/req floor | CPU us/req router | router - floor | "
        "router / floor CPU | of it kernel us/req floor / router | "
        "CPU % floor / router |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for conns in (1, 16, 64):
        d, f, r = (results[name, conns] for name in ("direct", "floor", "router"))
        print(
            f"| {conns} | {d.rps:.0f} | {f.rps:.0f} | {r.rps:.0f} | "
            f"{r.rps / f.rps:.2f} | {_ms(f)} | {_ms(r)} | "
            f"{f.cpu_us:.0f} | {r.cpu_us:.0f} | {r.cpu_us - f.cpu_us:.0f} | "
            f"{r.cpu_us / max(f.cpu_us, 1e-9):.2f} | "
            f"{f.sys_us:.0f} / {r.sys_us:.0f} | "
            f"{100 * f.cpu_share:.0f} / {100 * r.cpu_share:.0f} |"
        )
    print(
        "\nproxy floor: the same stack forwarding to the zero-cost node (no "
        "parsing, decision, limits or trace); router / proxy is herd's own work\n"
    )
    print(
        "| conc | proxy req/s | proxy p50 / p99 / p99.9 ms | CPU us/req proxy | "
        "of it kernel | proxy / floor CPU | router / proxy CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    for conns in (1, 16, 64):
        f, p, r = (results[name, conns] for name in ("floor", "proxy", "router"))
        print(
            f"| {conns} | {p.rps:.0f} | {_ms(p)} | {p.cpu_us:.0f} | {p.sys_us:.0f} | "
            f"{p.cpu_us / max(f.cpu_us, 1e-9):.2f} | "
            f"{r.cpu_us / max(p.cpu_us, 1e-9):.2f} |"
        )
    if args.workers > 1:
        print(
            f"\nscaling, 1 -> {args.workers} workers (same manifest, same cores: "
            f"{mode})"
        )
        if not pin.on or len(pin.server) < args.workers:
            print(
                f"(the workers do not have {args.workers} cores of their own here: "
                "they share with each other or with the load generator, so "
                "req/s cannot scale fully; CPU per request still shows the cost "
                "of the shared fleet state)"
            )
        print(
            "\n| conc | 1 worker req/s | N workers req/s | scaling | "
            "CPU us/req 1 / N | p99 ms 1 / N |"
        )
        print("|---|---|---|---|---|---|")
        for conns in (16, 64):
            one, many = results["router1", conns], results["router", conns]
            print(
                f"| {conns} | {one.rps:.0f} | {many.rps:.0f} | "
                f"{many.rps / one.rps:.2f}x | {one.cpu_us:.0f} / {many.cpu_us:.0f} "
                f"| {one.p99_us / 1000:.2f} / {many.p99_us / 1000:.2f} |"
            )
    if args.stalls:
        stall_table(results)
    steal = max(res.steal for res in results.values())
    print(
        f"\n(VM steal: up to {100 * steal:.0f} % of CPU time in a kept run; "
        "above a few % the machine's neighbours are slowing this one down)"
    )
    # At a fixed concurrency wrk is a closed loop: mean latency = conns / rate.
    floor64 = 64 / 0.025
    print(
        f"(c64 closed loop: p99 <= 25 ms needs >= {floor64:.0f} req/s even with "
        "zero jitter; router CPU at 100 % of a core caps req/s at "
        f"1e6 / {r16.cpu_us:.0f} us = {1e6 / max(r16.cpu_us, 1):.0f})"
    )
    print()
    print("| target | measured | goal | met |")
    print("|---|---|---|---|")
    for name, value, goal, ok in checks:
        print(f"| {name} | {value} | {goal} | {'yes' if ok else 'NO'} |")
    if streams["errors"]:
        print("\nfirst stream errors:", *streams["errors"][:5], sep="\n  ")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
