"""Benchmark: the router's /v2 registry serving a model blob the way Ollama pulls it.

Two routers on the same store: one with the blob sender (HERD_BLOB_SENDER,
default `idle`: bodies over 1 MiB sent by a helper process at SCHED_IDLE) and
one with HERD_BLOB_SENDER=off (the worker's own event loop sends them, the
previous behaviour). In one run, over the same blob (page cache warm for all),
interleaved and best of `--rounds`:

  cat            `cat blob > /dev/null`: the page-cache baseline (read(2) into
                 a 128 KiB buffer: one copy per byte)
  pull           one node: 8 parallel `Range` GETs (curl, bodies to
                 /dev/null: one copy per byte, the least any client does;
                 Ollama's Go puller also writes them into a file) through
                 each router
  nginx          the same 8 curls against nginx serving the same file with
                 sendfile (when nginx is installed)
  raw TCP        no HTTP at all: 8 loopback connections, `sendfile` on one
                 side, `recv` into a reused buffer on the other: what this
                 host's loopback allows ANY server with a copying client
  RSS, CPU       router worker resident memory before/after; worker + sender
                 CPU seconds per GiB served

Chat latency: sequential /api/chat through a router to a `herd sim` node, in
`--windows` interleaved windows (the machine's other load drifts, so every
condition is sampled across the whole run): idle; while four nodes pull
through the same router (sender / off); while the same four pulls go to nginx.
The pulling curls stand for other machines, so they run at SCHED_IDLE (`chrt
-i 0`): on a real site a node's download costs the router host none of its
CPU, and on this host they then take only CPU that nothing else wants.

Targets: pull >= 80% of cat's throughput; RSS growth far below the blob size;
chat p50 rises by < 1 ms under four pulls. Prints ratios measured in the
same run; asserts nothing about wall-clock time. Run from the repo root:

    python tests/bench/bench_registry.py [--size-mib 2048] [--windows 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from herd.bundle.importer import import_bundle  # noqa: E402
from herd.bundle.policy import Policy  # noqa: E402
from herd.store import Store  # noqa: E402
from tests.bench.bench_import import make_weights  # noqa: E402
from tests.bundle.bundle_helpers import ALLOWED, make_bundle  # noqa: E402
from tests.router.routerproc import (  # noqa: E402
    free_port,
    manifest,
    start_router,
    start_sim,
)

MIB = 1 << 20
RANGES = 8


def worker_pid(top: int) -> int:
    """The gunicorn worker under `herd serve` (serve → gunicorn master → worker)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        procs = psutil.Process(top).children(recursive=True)
        if len(procs) >= 2:
            master = next(p for p in procs if p.ppid() == top)
            return next(p for p in procs if p.ppid() == master.pid).pid
        time.sleep(0.1)
    raise RuntimeError("no gunicorn worker found")


def sender_pid(worker: int) -> int | None:
    """The worker's blob sender process, once it has started."""
    for proc in psutil.Process(worker).children():
        if "blobsender" in " ".join(proc.cmdline()):
            return proc.pid
    return None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cat_seconds(path: Path) -> float:
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", str(path)], stdout=null, check=True)
    return time.perf_counter() - start


def router_cpu_seconds(worker: int, sender: int | None) -> float:
    """CPU seconds of the worker and its blob sender so far."""
    return cpu_seconds(worker) + (cpu_seconds(sender) if sender else 0.0)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: The pullers stand for other machines: run them at the lowest CPU priority
#: (SCHED_IDLE) so that on this shared host they take only CPU nothing else
#: wants, as a remote node's download takes none of the router host's CPU.
IDLE = ["chrt", "-i", "0"] if shutil.which("chrt") else ["nice", "-n", "19"]


def pull_seconds(url: str, size: int) -> float:
    """8 parallel ranged GETs with curl (bodies discarded); wall time."""
    part = -(-size // RANGES)
    procs = []
    start = time.perf_counter()
    for first in range(0, size, part):
        last = min(first + part, size) - 1
        procs.append(
            subprocess.Popen(
                ["curl", "-sf", "-o", "/dev/null", "-r", f"{first}-{last}", url],
            )
        )
    for proc in procs:
        if proc.wait(600) != 0:
            raise RuntimeError(f"curl failed: {proc.args}")
    return time.perf_counter() - start


def raw_seconds(path: Path, size: int) -> float:
    """No HTTP at all: 8 loopback TCP connections, `sendfile` from `path` on
    one side, `recv` into a reused buffer on the other (one copy per byte, as
    curl's). What this host's loopback allows any server; wall time."""
    part = -(-size // RANGES)
    pids, threads = [], []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        start = time.perf_counter()
        for first in range(0, size, part):
            length = min(part, size - first)
            pid = os.fork()
            if pid == 0:  # the receiving "node"
                code = 1
                try:
                    sock = socket.create_connection(listener.getsockname())
                    buf, got = bytearray(128 << 10), 0
                    while got < length and (n := sock.recv_into(buf)):
                        got += n
                    code = 0 if got == length else 1
                finally:
                    os._exit(code)
            pids.append(pid)
            conn, _ = listener.accept()
            thread = threading.Thread(target=_send, args=(conn, path, first, length))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(600)
        for pid in pids:
            if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
                raise RuntimeError("raw receiver failed")
        return time.perf_counter() - start


def _send(conn: socket.socket, path: Path, offset: int, length: int) -> None:
    with conn, open(path, "rb") as fh:
        while length > 0:
            sent = os.sendfile(conn.fileno(), fh.fileno(), offset, min(length, MIB))
            offset, length = offset + sent, length - sent


NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx.error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  sendfile on;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def start_nginx(work: Path, root: Path) -> tuple[subprocess.Popen, str] | None:
    """nginx serving `root` with sendfile on a free loopback port, if installed."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if binary is None:
        return None
    port = free_port()
    conf = work / "nginx.conf"
    # As root, nginx's worker would be `nobody`, who cannot read the blob.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(user=user, work=work, port=port, root=root))
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except urllib.error.HTTPError:
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    return None


def chat_ms(base: str, count: int, model: str) -> list[float]:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        }
    ).encode()
    times = []
    for _ in range(count):
        req = urllib.request.Request(
            base + "/api/chat", data=body, headers={"Content-Type": "application/json"}
        )
        start = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as reply:
            reply.read()
        times.append((time.perf_counter() - start) * 1000)
    return times


def build_store(work: Path, size_mib: int) -> Path:
    """The state dir holding a `size_mib` model imported from a bundle."""
    state_dir = work / "state"
    manifest_path = state_dir / "store/manifests/registry.ollama.ai/library/bench/1"
    if manifest_path.exists():  # --dir of an earlier run: reuse its blob
        return state_dir
    print(f"building a {size_mib} MiB model bundle in {work} ...", flush=True)
    weights = work / "w.gguf"
    make_weights(weights, size_mib * MIB)
    bundle = make_bundle(
        work / "bundle", name="bench", model="bench:1", weights=weights
    )
    weights.unlink()
    store = Store(state_dir)
    try:
        import_bundle(bundle, Policy(ALLOWED, True, state_dir / "store"), store)
    finally:
        store.close()
    shutil.rmtree(bundle)
    return state_dir


def twin_state(state_dir: Path, twin: Path) -> Path:
    """A second state dir for the second router: the store's files hard-linked
    (same blob, same page cache), the database copied."""
    if twin.exists():
        shutil.rmtree(twin)
    shutil.copytree(state_dir / "store", twin / "store", copy_function=os.link)
    for db in state_dir.glob("*.db*"):
        shutil.copy2(db, twin / db.name)
    return twin


class Pullers:
    """Four nodes pulling `url` over and over until stopped."""

    def __init__(self, url: str, size: int, prefix: list[str]):
        self.url, self.size, self.prefix = url, size, prefix
        self.stop = threading.Event()
        self.procs: list[subprocess.Popen] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(4)]

    def __enter__(self) -> Pullers:
        for t in self.threads:
            t.start()
        time.sleep(0.5)
        return self

    def _run(self) -> None:
        part = -(-self.size // RANGES)
        for _ in range(1000):
            if self.stop.is_set():
                return
            procs = [
                subprocess.Popen(
                    [
                        *self.prefix,
                        "curl",
                        "-s",
                        "-o",
                        "/dev/null",
                        "-r",
                        f"{first}-{min(first + part, self.size) - 1}",
                        self.url,
                    ],
                )  # fmt: skip
                for first in range(0, self.size, part)
            ]
            self.procs += procs
            for proc in procs:
                proc.wait(600)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for t in self.threads:
            t.join(600)
        for proc in self.procs:
            proc.wait(60)


def real_time(pids: list[int]) -> None:
    """Put the chat path (routers, sim) at SCHED_FIFO 1, every thread, except
    blob senders: on a host shared with other people's work, what the chat
    then waits for is the router's own doing, not theirs (the kernel still
    keeps 5% of each second for everything else)."""
    for pid in pids:
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(True)]:
            if "blobsender" not in " ".join(proc.cmdline()):
                subprocess.run(
                    ["chrt", "-a", "-f", "-p", "1", str(proc.pid)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )


class Spinners:
    """Both CPUs kept busy at idle priority, doing no I/O at all: the control
    for the pulls (a CPU that is never idle wakes a chat faster than one the
    hypervisor has parked, so "idle" alone would flatter the pulls)."""

    def __enter__(self) -> Spinners:
        spin = ["timeout", "300", "sh", "-c", "while :; do :; done"]
        self.procs = [
            subprocess.Popen([*IDLE, *spin]) for _ in range(os.cpu_count() or 2)
        ]
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(60)


def start_routers(state_dir: Path, work: Path, sim) -> dict[str, object]:
    """Routers on the same blob: blob sender at SCHED_IDLE (the default), at
    nice 19, and none (the worker sends)."""
    text = manifest([sim])
    routers = {"sender": start_router(state_dir, text, work / "router.log")}
    for mode in ("nice", "off"):
        routers[mode] = start_router(
            twin_state(state_dir, work / f"state-{mode}"),
            text,
            work / f"router-{mode}.log",
            extra_env={"HERD_BLOB_SENDER": mode},
        )
    return routers


def wchar(pids: list[int]) -> int:
    """Bytes these processes wrote so far, sendfile included (/proc/PID/io)."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                total += int(line.split()[1])
    return total


def senders_of(name: str, workers: dict[str, int], nginx_pid: int | None) -> list[int]:
    """The processes that send the bytes of pulls to `name`."""
    if name == "nginx":
        return [p.pid for p in psutil.Process(nginx_pid).children()]
    worker = workers[name]
    sender = sender_pid(worker)
    return [worker] + ([sender] if sender else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=5, help="chat windows")
    ap.add_argument("--chats", type=int, default=60, help="chats per window")
    ap.add_argument("--dir", default=None, help="work directory (default: temp)")
    ap.add_argument("--rounds", type=int, default=3, help="pull rounds (best of)")
    ap.add_argument(
        "--rt",
        action="store_true",
        help="chat phase: routers, sim and the chat client at SCHED_FIFO (root; "
        "shields the chat path from the host's other load)",
    )
    args = ap.parse_args()
    if not shutil.which("curl"):
        sys.exit("bench_registry needs curl (apt-get install curl)")
    work = Path(args.dir or tempfile.mkdtemp(prefix="herd-bench-registry-"))
    work.mkdir(parents=True, exist_ok=True)
    state_dir = build_store(work, args.size_mib)
    raw = (
        state_dir / "store/manifests/registry.ollama.ai/library/bench/1"
    ).read_bytes()
    layer = max(json.loads(raw)["layers"], key=lambda x: x["size"])
    blob = state_dir / "store/blobs" / layer["digest"].replace(":", "-")
    size = blob.stat().st_size
    path = f"/v2/library/bench/blobs/{layer['digest']}"
    model = "llama3.2:3b"

    sim = start_sim("n1", models=model)
    routers: dict = {}
    nginx = None
    rate: dict[str, list[float]] = {}
    cpu_s: dict[str, float] = {}
    worker_cpu: dict[str, float] = {}
    pulled: dict[str, float] = {}
    pull_time: dict[str, float] = {}
    chats: dict[str, list[float]] = {}
    try:
        routers = start_routers(state_dir, work, sim)
        workers = {k: worker_pid(r.proc.pid) for k, r in routers.items()}
        nginx = start_nginx(work, blob.parent)
        urls = {k: r.url + path for k, r in routers.items()}
        if nginx:
            urls["nginx"] = f"{nginx[1]}/{blob.name}"
        for r in routers.values():
            chat_ms(r.url, 20, model)  # warm up
        cat_seconds(blob)  # page cache warm
        rss_before = rss_mib(workers["sender"])
        for _ in range(args.rounds):
            rate.setdefault("cat", []).append(size / cat_seconds(blob))
            for name, url in urls.items():
                pid = workers.get(name)
                before = router_cpu_seconds(pid, sender_pid(pid)) if pid else 0.0
                alone = cpu_seconds(pid) if pid else 0.0
                rate.setdefault(name, []).append(size / pull_seconds(url, size))
                if pid:
                    after = router_cpu_seconds(pid, sender_pid(pid))
                    cpu_s[name] = cpu_s.get(name, 0.0) + after - before
                    worker_cpu[name] = (
                        worker_cpu.get(name, 0.0) + cpu_seconds(pid) - alone
                    )
            rate.setdefault("raw", []).append(size / raw_seconds(blob, size))
        rss_after = rss_mib(workers["sender"])
        sender = sender_pid(workers["sender"])
        sender_rss = rss_mib(sender) if sender else 0.0

        base = routers["sender"].url
        if args.rt:
            real_time([r.proc.pid for r in routers.values()] + [sim.proc.pid])
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        for _ in range(args.windows):
            chats.setdefault("idle", []).extend(chat_ms(base, args.chats, model))
            with Spinners():
                chats.setdefault("spin", []).extend(chat_ms(base, args.chats, model))
            for name, url in urls.items():
                chat_to = routers[name].url if name in routers else base
                nginx_pid = nginx[0].pid if nginx else None
                sent, start = wchar(senders_of(name, workers, nginx_pid)), time.time()
                with Pullers(url, size, [] if args.rt else IDLE):
                    chats.setdefault(name, []).extend(
                        chat_ms(chat_to, args.chats, model)
                    )
                    sent = wchar(senders_of(name, workers, nginx_pid)) - sent
                    took = time.time() - start
                pulled[name] = pulled.get(name, 0.0) + sent / MIB
                pull_time[name] = pull_time.get(name, 0.0) + took
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        if nginx:
            nginx[0].terminate()
            nginx[0].wait(10)
        for r in routers.values():
            r.stop()
        sim.kill()
    cpu = (cpu_s, worker_cpu)
    chats["pull rate"] = {k: pulled[k] / pull_time[k] for k in pulled}
    report(args, size, rate, cpu, chats, (rss_before, rss_after, sender_rss))
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


def report(args, size, rate, cpu, chats, rss) -> None:
    cpu_s, worker_cpu = cpu
    mib, gib, rounds = size / MIB, size / (1 << 30), args.rounds
    best = {k: max(v) / MIB for k, v in rate.items()}
    cat = best["cat"]
    print(f"blob                 {mib:8.0f} MiB   best of {rounds} rounds each")
    print(f"cat > /dev/null      {cat:8.0f} MiB/s")
    labels = {
        "sender": "router, sender idle",
        "nice": "router, sender nice",
        "off": "router, worker sends",
        "nginx": "nginx sendfile",
        "raw": "raw TCP, no HTTP",
    }
    for key, label in labels.items():
        if key in best:
            print(f"{label:20} {best[key]:8.0f} MiB/s   /cat {best[key] / cat:.2f}"
                  + (f"   router/{key} {best['sender'] / best[key]:.2f}"
                     if key in ("nginx", "raw") else ""))  # fmt: skip
    print("  (target: router >= 0.80 of cat)")
    for key in ("sender", "nice", "off"):
        print(f"router CPU, {key:8} {cpu_s[key] / rounds / gib:8.2f} s per GiB served, "
              f"of which the worker {worker_cpu[key] / rounds / gib:.3f}")  # fmt: skip
    before, after, sender_rss = rss
    print(f"router worker RSS    {before:8.1f} -> {after:.1f} MiB "
          f"(+{after - before:.1f} MiB after {rounds} x {mib:.0f} MiB); "
          f"blob sender {sender_rss:.1f} MiB")  # fmt: skip
    idle = statistics.median(chats["idle"])
    n = args.windows * args.chats
    print(f"chat p50 idle        {idle:8.2f} ms   ({n} chats per condition, "
          f"{args.windows} interleaved windows"
          f"{', chat path SCHED_FIFO' if args.rt else ''})")  # fmt: skip
    spin = statistics.median(chats["spin"])
    print(f"chat p50 CPUs spun   {spin:8.2f} ms   {spin - idle:+.2f} ms vs idle "
          "(idle-priority busy loops, no I/O: the control for the pulls)")  # fmt: skip
    names = {
        "sender": "4 pulls, sender idle",
        "nice": "4 pulls, sender nice",
        "off": "4 pulls, worker",
        "nginx": "4 pulls to nginx",
    }
    for key, label in names.items():
        if key in chats:
            p50 = statistics.median(chats[key])
            print(f"chat p50 {label:20} {p50:8.2f} ms   {p50 - idle:+.2f} ms vs idle, "
                  f"{p50 - spin:+.2f} ms vs spun, pulls ran at "
                  f"{chats['pull rate'][key]:.0f} MiB/s"
                  + ("  (target < +1 ms)" if key == "sender" else ""))  # fmt: skip


if __name__ == "__main__":
    main()
