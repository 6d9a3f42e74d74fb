#!/usr/bin/env python3
"""Benchmark: the router's /v2 registry serving a model blob the way Ollama pulls it.

In one run, over the same blob (page cache warm for all):

  cat            `cat blob > /dev/null`: the disk/page-cache baseline
  pull x1        one node: 8 parallel `Range` GETs through the router (curl,
                 bodies to /dev/null), like Ollama's ranged download
  RSS            the router worker's resident memory before and after the pull
  chat p50       sequential /api/chat through the router to a `herd sim` node,
                 idle and then while four nodes pull at once

The router is pinned to CPU 0 and everything else to CPU 1 (`--no-pin` lets
the OS schedule), so the chat figures show the router, not a starved CPU.

Targets: pull >= 80% of cat's throughput; RSS growth far below the blob size;
chat p50 rises by < 1 ms under four pulls. Prints ratios; asserts nothing
about wall-clock time. Run from the repo root:

    python tests/bench/bench_registry.py [--size-mib 2048] [--chats 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from herd.bundle.importer import import_bundle  # noqa: E402
from herd.bundle.policy import Policy  # noqa: E402
from herd.store import Store  # noqa: E402
from tests.bench.bench_import import make_weights  # noqa: E402
from tests.bundle.bundle_helpers import ALLOWED, make_bundle  # noqa: E402
from tests.router.routerproc import manifest, start_router, start_sim  # noqa: E402

MIB = 1 << 20
RANGES = 8


def worker_pid(master: int) -> int:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True
    ).stdout.split()
    return int(out[0])


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--chats", type=int, default=300)
    ap.add_argument("--dir", default=None, help="work directory (default: temp)")
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the router to CPU 0 and everything else to CPU 1",
    )
    args = ap.parse_args()
    if not shutil.which("curl"):
        sys.exit("bench_registry needs curl (apt-get install curl)")
    work = Path(args.dir or tempfile.mkdtemp(prefix="herd-bench-registry-"))
    state_dir = work / "state"
    print(f"building a {args.size_mib} MiB model bundle in {work} ...", flush=True)
    weights = work / "w.gguf"
    make_weights(weights, args.size_mib * MIB)
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
    raw = (
        state_dir / "store/manifests/registry.ollama.ai/library/bench/1"
    ).read_bytes()
    layer = max(json.loads(raw)["layers"], key=lambda x: x["size"])
    blob = state_dir / "store/blobs" / layer["digest"].replace(":", "-")
    size = blob.stat().st_size

    sim = start_sim("n1", models="llama3.2:3b")
    router = None
    try:
        router = start_router(state_dir, manifest([sim]), work / "router.log")
        url = f"{router.url}/v2/library/bench/blobs/{layer['digest']}"
        worker = worker_pid(router.proc.pid)
        if not args.no_pin and len(os.sched_getaffinity(0)) > 1:
            # The router alone on CPU 0; curl, the sim and this client on CPU 1,
            # so the chat figures show the router's scheduling, not CPU theft.
            for pid in (router.proc.pid, worker):
                os.sched_setaffinity(pid, {0})
            for pid in (sim.proc.pid, os.getpid()):
                os.sched_setaffinity(pid, {1})
        chat_ms(router.url, 20, "llama3.2:3b")  # warm up
        cat_seconds(blob)  # page cache warm
        cat_s = min(cat_seconds(blob) for _ in range(3))
        rss_before = rss_mib(worker)
        cpu_before = cpu_seconds(worker)
        pull_s = min(pull_seconds(url, size) for _ in range(3))
        router_cpu = (cpu_seconds(worker) - cpu_before) / 3
        rss_after = rss_mib(worker)

        idle = chat_ms(router.url, args.chats, "llama3.2:3b")
        stop = threading.Event()

        def puller() -> None:
            while not stop.is_set():
                pull_seconds(url, size)

        threads = [threading.Thread(target=puller, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        busy = chat_ms(router.url, args.chats, "llama3.2:3b")
        stop.set()
        for t in threads:
            t.join(600)
    finally:
        if router:
            router.stop()
        sim.kill()

    mib = size / MIB
    cat_rate, pull_rate = mib / cat_s, mib / pull_s
    p50_idle, p50_busy = statistics.median(idle), statistics.median(busy)
    print(f"blob                {mib:10.0f} MiB")
    print(f"cat > /dev/null     {cat_rate:10.0f} MiB/s")
    ratio = pull_rate / cat_rate
    print(f"pull, 8 ranges      {pull_rate:10.0f} MiB/s   ratio {ratio:.2f}"
          "  (target >= 0.80)")  # fmt: skip
    share = 100 * router_cpu / pull_s
    print(f"router CPU          {router_cpu / (mib / 1024):10.2f} s per GiB served "
          f"({share:.0f}% of one core during the pull)")  # fmt: skip
    print(f"router RSS          {rss_before:10.1f} -> {rss_after:.1f} MiB "
          f"(+{rss_after - rss_before:.1f} MiB for a {mib:.0f} MiB blob)")  # fmt: skip
    print(f"chat p50 idle       {p50_idle:10.2f} ms")
    print(f"chat p50, 4 pulls   {p50_busy:10.2f} ms   +{p50_busy - p50_idle:.2f} ms"
          "  (target < 1 ms)")  # fmt: skip
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
