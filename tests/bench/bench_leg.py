"""Node leg benchmark: the router's CPU per request from "model resolved" to
"the node's answer handed back", in-process.

    python tests/bench/bench_leg.py [--requests 20000] [--repeat 3] [--concurrency 16]

Needs `nginx` (Debian: `apt-get install -y nginx-light`). nginx on a free
loopback port answers POST /api/chat with bench_router.py's fixed reply (a
node that costs nothing). In one gevent process (monkey-patched, as the
router's worker is), `--concurrency` greenlets then send bench_router.py's
non-streaming chat through the router's own node leg, as
`ollama.Forwarded.on_post` and `Runtime.finish` drive it:
`Forwarder.open` (scoring, the node slot, the request, the node's answer read
and folded), the answer's token counts, the slot and connection given back
and the success learned (`Stats.success`, `report_served`). No HTTP server,
no trace: the rest of the router is bench_router.py's business.

It prints the CPU time per request of the leg (process user + system time)
and, measured in the same run as the baseline, of bench_upstream.py's bare
socket exchange: `leg / floor` is the leg's cost in units of the least any
HTTP client can do here. `--repeat N` interleaves N runs of each and keeps
each one's best and median (for shared machines). Everything listens on
127.0.0.1 only, nginx is stopped at the end, and every loop is bounded by
--requests.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import CHAT_BODY, MODEL  # noqa: E402
from bench_upstream import floor, start_nginx  # noqa: E402

from herd.discovery.agents import AgentAwareHealth  # noqa: E402
from herd.discovery.membership import Membership  # noqa: E402
from herd.manifest.loader import load_bytes  # noqa: E402
from herd.router.fleetstate import FleetState  # noqa: E402
from herd.router.routing.forward import Forwarder, Outcome  # noqa: E402
from herd.router.routing.proxy import Upstream  # noqa: E402
from herd.router.routing.queues import Queues  # noqa: E402
from herd.router.routing.stats import Stats  # noqa: E402

MANIFEST = """\
apiVersion: herd/v1
kind: Fleet
metadata:
  name: bench
router:
  listen: 127.0.0.1:1
  node_networks: [127.0.0.0/8]
  clients:
    - name: bench
      networks: [127.0.0.0/8]
  limits:
    queue_depth: 100000
    request_timeout_s: 600
nodes:
  - name: zero
    url: http://127.0.0.1:{port}
    max_concurrency: 4096
models:
  - name: {model}
    place:
      nodes: [zero]
"""


class Leg:
    """The router's node leg over one fleet, as one worker holds it."""

    def __init__(self, port: int):
        self.fleet = load_bytes(MANIFEST.format(port=port, model=MODEL).encode())
        state = FleetState(None)
        url = self.fleet.nodes[0].url
        self.upstream = Upstream(lambda u: u == url, swept=True)
        self.health = AgentAwareHealth(
            lambda: self.fleet,
            self.upstream,
            time.time,
            membership=Membership(),
            static_fleet=lambda: self.fleet,
        )
        self.health.share(state)
        self.health.poll_once()
        self.queues = Queues(time.monotonic, state)
        limits = self.fleet.router.limits
        self.queues.configure(
            [(n.name, n.max_concurrency) for n in self.fleet.nodes], limits.queue_depth
        )
        self.stats = Stats(state=state)
        self.forwarder = Forwarder(
            health=self.health,
            queues=self.queues,
            stats=self.stats,
            upstream=self.upstream,
        )
        self.models = (self.fleet.resolve(MODEL),)
        self.raw = CHAT_BODY.encode()
        self.body = json.loads(self.raw)

    def one(self) -> None:
        """One request, as on_post and Runtime.finish drive the leg."""
        now = time.monotonic()
        outcome = Outcome(t0=time.time(), started=now, route="", method="POST")
        opened = self.forwarder.open(
            self.fleet,
            "/api/chat",
            self.body,
            self.models,
            stream=False,
            outcome=outcome,
            raw=self.raw,
        )
        assert opened.status == 200 and opened.body, opened.status
        outcome.counts(opened.first_obj or {})
        opened.release()
        end = time.monotonic()
        self.health.report_served(opened.node.name)
        self.stats.success(
            opened.node.name, opened.model.name, None, outcome.tokens_out, end - now
        )

    def run(self, count: int, concurrency: int) -> float:
        """CPU seconds for `count` requests from `concurrency` greenlets."""

        def loop(n: int) -> None:
            for _ in range(n):
                self.one()

        share = count // concurrency
        start = time.process_time()
        gevent.joinall([gevent.spawn(loop, share) for _ in range(concurrency)])
        return (time.process_time() - start) / (share * concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    runs: dict[str, list[float]] = {"floor": [], "leg": []}
    with tempfile.TemporaryDirectory(prefix="herd-bench-leg-") as tmp:
        proc, port = start_nginx(Path(tmp))
        try:
            leg = Leg(port)
            leg.run(400, args.concurrency)  # warm up (imports, connections)
            floor(port, 200)
            for _ in range(args.repeat):
                runs["floor"].append(floor(port, args.requests) / args.requests)
                runs["leg"].append(leg.run(args.requests, args.concurrency))
            leg.upstream.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(
        f"requests per run: {args.requests}, concurrency {args.concurrency}, "
        f"{args.repeat} runs"
    )
    for name, values in runs.items():
        us = sorted(v * 1e6 for v in values)
        print(
            f"{name:6} best {us[0]:7.1f}  median {statistics.median(us):7.1f}"
            f"  worst {us[-1]:7.1f} us/req CPU"
        )
    ratios = [a / b for a, b in zip(runs["leg"], runs["floor"], strict=True)]
    print(f"ratio leg/floor: median {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
