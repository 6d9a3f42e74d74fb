"""Fleet state benchmark: what sharing slots, buckets and counters between router
workers costs per request (herd/router/fleetstate.py).

    python tests/bench/bench_fleetstate.py [--requests 200000] [--procs 3]

One "request" does what the router does with the fleet state on every
forwarded request: take a node slot and give it back, spend a rate-limit
token (when the group has a rate limit), count the success and note the
node answered. Timed as CPU per
request (time.process_time), in the same run:

1. before: the per-process bookkeeping the router had before (plain integers
   and a token bucket in a dict), re-created here as the baseline;
2. private: the fleet state in anonymous memory (no lock: one process);
3. shared: the fleet state in a mapped file with its flock (what every
   gunicorn worker uses with --workers 2 or more);
4. shared, one worker: the mapped file of a one-worker router (marked SOLO
   by the master: no flock);
5. shared x N: N processes doing (3) at once on the same node and group
   (lock contention; on a machine with fewer cores than N the processes also
   take turns on the CPU, which process_time does not count).

Compare the shared figure with the router's CPU per request from
bench_router.py (hundreds of microseconds): that ratio is the overhead.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from herd.manifest.model import Client, RateLimit
from herd.router import fleetfile
from herd.router.fleetstate import REQUESTS, FleetState
from herd.router.policy import RateLimiter
from herd.router.routing.queues import Queues


def before(count: int) -> float:
    """The old per-process bookkeeping (slots as ints, a dict token bucket)."""
    in_flight = {"node-a": 0}
    bucket = {"g": [1e12, time.monotonic()]}
    served: dict[str, float] = {}
    requests = 0
    began = time.process_time()
    for _ in range(count):
        if in_flight["node-a"] < 1_000_000:
            in_flight["node-a"] += 1
        now = time.monotonic()
        b = bucket["g"]
        b[0] = min(1e12, b[0] + (now - b[1]) * 1e9)
        b[1] = now
        b[0] -= 1.0
        requests += 1
        served["node-a"] = time.time()
        in_flight["node-a"] -= 1
    return time.process_time() - began


def herd_loop(state: FleetState, count: int, limited: bool = True) -> float:
    """The same request through the fleet state's own classes (`limited`:
    the caller's group has a rate limit; most have none)."""
    queues = Queues(time.monotonic, state)
    queues.configure([("node-a", 1_000_000)], depth=0)
    limiter = RateLimiter(time.monotonic, state)
    client = Client(
        name="g",
        networks=(),
        rate_limit=RateLimit(requests_per_minute=10**9, burst=10**9)
        if limited
        else None,
    )
    began = time.process_time()
    for _ in range(count):
        queues.acquire(("node-a",), 1.0)
        limiter.take(client)
        state.bump(REQUESTS)
        state.served("node-a", time.time())
        queues.release("node-a")
    return time.process_time() - began


def _worker(path: str, count: int, out: multiprocessing.Queue) -> None:
    out.put(herd_loop(FleetState(path), count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--procs", type=int, default=3)
    args = parser.parse_args()
    n = args.requests
    solo = fleetfile.prepare(workers=1)
    try:
        alone = herd_loop(FleetState(solo), n) / n
    finally:
        fleetfile.cleanup()
    path = fleetfile.prepare()
    try:
        rows = [
            ("before (per-process ints)", before(n) / n),
            ("private (one process)", herd_loop(FleetState(None), n) / n),
            ("shared (mapped file + flock)", herd_loop(FleetState(path), n) / n),
            (
                "shared, group without rate limit",
                herd_loop(FleetState(path), n, limited=False) / n,
            ),
            ("shared, one worker (no flock)", alone),
        ]
        out: multiprocessing.Queue = multiprocessing.Queue()
        procs = [
            multiprocessing.Process(target=_worker, args=(path, n, out))
            for _ in range(args.procs)
        ]
        for proc in procs:
            proc.start()
        spent = [out.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join(60)
        rows.append((f"shared x {args.procs} processes", sum(spent) / (n * len(procs))))
        total = FleetState(path, claim=False).total(REQUESTS)
        assert total == n * (len(procs) + 2), total  # every count landed
    finally:
        fleetfile.cleanup()
    base = rows[0][1]
    print(f"{n} requests per run; CPU per request (time.process_time)")
    print("| bookkeeping | µs/request | × before |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e6:.2f} | {seconds / base:.1f} |")


if __name__ == "__main__":
    main()
