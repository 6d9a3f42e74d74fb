"""Router CPU per request by backend: an Ollama node vs an OpenAI-compatible node.

    python tests/bench/bench_backends.py [--requests 400] [--rounds 2]

Starts two `herd sim` nodes on loopback (`--tps 0`: the node costs almost
nothing), one with Ollama's API and one with `--api openai`, each serving a
model, and one router with both nodes. Then, back to back and `--rounds`
times, it sends the same non-streaming and streaming /api/chat and
/v1/chat/completions requests to each and prints the router's CPU time per
request (psutil user+system of its processes) for each pair, and the ratio
openai / ollama: what converting (Ollama client to an OpenAI node) or passing
through (OpenAI client to an OpenAI node) costs against today's path, measured
in the same run. Every process is killed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.router.routerproc import manifest, start_router, start_sim  # noqa: E402


def cpu(pid: int) -> float:
    procs = psutil.Process(pid).children(recursive=True)
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def run(host: str, path: str, body: dict, count: int) -> None:
    conn = http.client.HTTPConnection(host, timeout=30)
    data = json.dumps(body).encode()
    for _ in range(count):
        conn.request("POST", path, body=data, headers={"Content-Type": "x/json"})
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200, reply.status
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="herd-bench-"))
    ol = start_sim("ol", 0, "llama3.2:3b")
    oa = start_sim("oa", 0, "llama3.2:3b-oa", extra=("--api", "openai"))
    doc = yaml.safe_load(manifest([ol, oa]))
    doc["nodes"][1]["api"] = "openai"
    doc["models"] = [
        {"name": "llama3.2:3b", "aliases": ["on-ollama"], "place": {"nodes": ["ol"]}},
        {"name": "llama3.2:3b-oa", "place": {"nodes": ["oa"]}},
    ]
    router = start_router(tmp / "state", yaml.safe_dump(doc), tmp / "router.log")
    try:
        router.wait_nodes_up(2)
        host = router.url.split("//", 1)[1]
        messages = [{"role": "user", "content": "hello there"}]
        cases = []
        for stream in (False, True):
            for route in ("/api/chat", "/v1/chat/completions"):
                cases.append((route, stream))
        for rnd in range(args.rounds):
            for route, stream in cases:
                costs = {}
                for label, name in (
                    ("ollama", "on-ollama"),
                    ("openai", "llama3.2:3b-oa"),
                ):
                    body = {"model": name, "messages": messages, "stream": stream}
                    run(host, route, body, 20)  # warm
                    before = cpu(router.proc.pid)
                    run(host, route, body, args.requests)
                    costs[label] = (cpu(router.proc.pid) - before) / args.requests
                print(
                    f"round {rnd + 1} {route:22} stream={stream!s:5} "
                    f"ollama {costs['ollama'] * 1e6:7.0f} us/req  "
                    f"openai {costs['openai'] * 1e6:7.0f} us/req  "
                    f"ratio {costs['openai'] / costs['ollama']:.2f}",
                    flush=True,
                )
    finally:
        router.stop()
        ol.kill()
        oa.kill()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
