"""Discovery benchmark: what 500 `herd node` agents cost a router serving chat.

    python tests/bench/bench_discovery.py [--agents 500] [--interval 2]
        [--duration 8] [--repeat 3]

Needs `nginx` and `wrk`, like tests/bench/bench_router.py (whose zero-cost node
and wrk helpers it reuses). Everything listens on 127.0.0.1 and is killed at
the end; each run is bounded by --duration.

A router (one gevent worker, pinned to its own core when there are two) serves
/api/chat from an nginx node that answers at once. A generator process plays
--agents agents, each on a keep-alive connection from its own loopback
address, like the real agent. First every agent joins: it connects and sends
its whole heartbeat (~3 KB with metrics and model lists), as `herd node` does
once when it starts; that is not in the measured window (its cost per agent
is printed apart). Then, measured, each agent sends one signed heartbeat
every --interval seconds, spread evenly over the interval, without the
unchanged models (~0.8 KB), as `herd node` does from its second beat on for
as long as it runs. Phases, interleaved --repeat times:

  idle       nothing: the router's own background cost (health poller);
  beats      heartbeats only: router CPU minus idle = the heartbeats' cost;
  chat       wrk at c=16 on /api/chat: p50 without heartbeats;
  chat+beats both at once: p50 with heartbeats;
  control    chat while the same generator beats at nginx instead: the
             generator's own toll on the load core (which it shares with wrk
             and nginx) without any on the router's. chat+beats minus control
             is the router's part of the p50 change.

The three chat phases take turns in a different order each run; the p50
changes are also printed paired by run, with their spread.

Where chat goes decides what the p50 change means. By default it goes to
nginx, which answers at once: wrk's 16 connections then keep the router's
core saturated (a closed loop), every microsecond heartbeats take comes out
of chat's throughput, and p50 rises in proportion (Little's law: by about
p50 x share / (1 - share), so +0.2 ms at p50 ~4 ms means heartbeats under
~5% of the core). That is the worst case. `--node-ms 20` sends chat to a
node that answers in 20 ms (herd sim, one token), as real nodes take time:
the router has headroom, as on a real site, and the change is the delay
heartbeats add to a chat request.

Targets: heartbeats under 10 % of one core; chat p50 changes by under 0.2 ms
(the medians over the repeats). Exit 0 when both are met, 1 otherwise: on a
shared machine, read the figures (and the steal column) before believing it.
To compare two checkouts on a busy machine, count instructions per beat
instead (tests/bench/count_heartbeat.py: exact, load-independent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from herd.discovery import fleetkey  # noqa: E402
from tests.bench.bench_router import (  # noqa: E402
    CHAT_BODY,
    HERD,
    MODEL,
    TAG,
    WRK_LUA,
    Procs,
    choose_pinning,
    cpu_seconds,
    free_port,
    nginx_conf,
    run_wrk,
    wait_http,
)

MANIFEST = """\
apiVersion: herd/v1
kind: Fleet
metadata:
  name: bench-discovery
router:
  listen: 127.0.0.1:{router}
  node_networks: [127.0.0.0/8]
  clients:
    - name: bench
      networks: [127.0.0.0/8]
      operator: true
  limits:
    queue_depth: 100000
nodes:
  - name: zero
    url: http://127.0.0.1:{node}
    max_concurrency: 4096
discovery:
  node_keys: {key}
  heartbeat_timeout_s: 3600
  mdns:
    enabled: false
    networks: [127.0.0.0/8]
    defaults: {{labels: {{pool: agents}}, max_concurrency: 4}}
models:
  - name: {model}
    place:
      nodes: [zero]
"""

TARGET_CPU_SHARE = 0.10
TARGET_P50_DELTA_MS = 0.2
PHASES = ["chat", "both", "control"]
#: Byte counts are integers in a real agent's metrics (psutil's, nvidia-smi's
#: MiB times 2**20), as here: floats would cost the router's JSON reader more.
G = 10**9


def agent_body(i: int, partial: bool = False) -> bytes:
    """A heartbeat the size and shape of a real agent's: all of it, or
    (`partial`) with the unchanged version and models left out."""
    models = [
        {**TAG, "name": f"model-{j}:latest", "model": f"model-{j}:latest"}
        for j in range(6)
    ]
    doc = {
        "name": f"agent-{i:04d}",
        "url": f"http://{_source(i)}:11434",
        "interval_s": 2,
        "via": "router-flag",
        "inventory": f"{i:032x}",
        "version": "0.12.3",
        "models": models,
        "loaded": models[:1],
        "metrics": {
            "cpu_percent": 12.5,
            "cpu_count": 32,
            "memory": {"total": 270 * G, "available": 200 * G, "pressure_avg10": 0.0},
            "load": [1.0, 1.2, 1.1],
            "swap": {"total": 8 * G, "used": 0, "in_per_s": 0.0, "out_per_s": 0.0},
            "disk": {"path": "/var/lib/ollama", "total": 4000 * G, "free": 2000 * G},
            "temperatures": {"coretemp": 55.0},
            "gpus": [
                {
                    "index": g,
                    "name": "NVIDIA A100",
                    "memory_total": 85 * G,
                    "memory_used": 20 * G,
                    "memory_free": 65 * G,
                    "utilization_percent": 30.0,
                }
                for g in range(2)
            ],  # fmt: skip
        },
    }
    if partial:
        for key in ("version", "models", "loaded"):
            del doc[key]
    return json.dumps(doc, separators=(",", ":")).encode()


class Link:
    """One agent's keep-alive connection to the router (like `herd node`'s),
    from the agent's own loopback address so each holds its name's address."""

    def __init__(self, port: int, source: str):
        self.port, self.source = port, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, head: bytes, body: bytes) -> tuple[bytes, bytes]:
        """Send one request; the status code and body. Reconnects once when
        the router closed the idle connection."""
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1", self.port, local_addr=(self.source, 0)
                    ),
                    5,
                )
            try:
                self.writer.write(head + body)
                # One timer for the whole answer (wait_for makes a task per
                # read: this process shares the load core with wrk).
                async with asyncio.timeout(5):
                    reply = await self.reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in reply.lower().split(b"\r\n"):
                        if line.startswith(b"content-length:"):
                            length = int(line[15:])
                    data = await self.reader.readexactly(length)
                return reply.split(b" ", 2)[1], data
            except (
                ConnectionError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _source(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


async def _beat(link: Link, key: fleetkey.FleetKey, body: bytes, stats: dict) -> bool:
    """Send one signed heartbeat; True when it was taken (the next may then
    leave the unchanged models out). With `--floor`'s probe, GET /healthz
    instead: the same connections and rate, next to no work in the app."""
    if PROBE:
        head, body = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b""
        stats["sent"] += 1
        try:
            status, _ = await link.post(head, body)
        except (TimeoutError, OSError, IndexError, ValueError):
            stats["errors"] += 1
            link.close()
            return False
        stats["ok" if status == b"200" else "refused"] += 1
        return True
    headers = fleetkey.sign(key, body, time.time())
    head = (
        "POST /fleet/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    stats["sent"] += 1
    if link.writer is None:
        stats["connects"] += 1
    try:
        status, reply = await link.post(head, body)
    except (TimeoutError, OSError, IndexError, ValueError):
        stats["errors"] += 1
        link.close()
        return False
    taken = status == b"200" and b'"resend":true' not in reply
    stats["ok" if taken else "refused"] += 1
    return taken


async def _agent(
    i: int, link: Link, key: fleetkey.FleetKey, stats: dict, start: float,
    interval: float, gap: float, duration: float,
) -> None:  # fmt: skip
    """One agent in the measured window: a beat every `interval`, first at
    start + i * gap, without the unchanged models (like `herd node` once the
    router holds them), or all again when the router asks."""
    full, partial = agent_body(i), agent_body(i, partial=True)
    body = partial
    due = start + i * gap
    while due - start < duration:  # bounded by duration
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        body = partial if await _beat(link, key, body, stats) else full
        due += interval


async def _join(
    i: int, link: Link, key: fleetkey.FleetKey, stats: dict, start: float, gap: float
) -> None:
    """Before the measured window: connect and send the whole heartbeat, as
    an agent does once when it starts (or when its connection broke)."""
    delay = start + i * gap - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    await _beat(link, key, agent_body(i), stats)


async def _heartbeats(
    port: int, key_path: str, agents: int, interval: float, duration: float
) -> dict:
    """Join every agent (connection and whole heartbeat, not measured), print
    `ready`, then `duration` seconds of steady heartbeats on the kept-alive
    connections; the steady phase's counts."""
    key = fleetkey.load(key_path)[0]
    links = [Link(port, _source(i)) for i in range(agents)]
    joined = {"ok": 0, "refused": 0, "errors": 0, "sent": 0, "connects": 0}
    start = time.monotonic()
    await asyncio.wait(
        [
            asyncio.create_task(_join(i, links[i], key, joined, start, 1 / agents))
            for i in range(agents)
        ],
        timeout=30,
    )
    # The first steady beat of each agent comes one interval after its join.
    start += interval
    await asyncio.sleep(max(0.0, start - time.monotonic() - 0.2))
    print(json.dumps({"ready": joined}), flush=True)
    stats = {"ok": 0, "refused": 0, "errors": 0, "sent": 0, "connects": 0}
    cpu = time.process_time()
    tasks = [
        asyncio.create_task(
            _agent(i, links[i], key, stats, start + i / agents, interval,
                   interval / agents, duration)
        )
        for i in range(agents)
    ]  # fmt: skip
    await asyncio.wait(tasks, timeout=duration + 10)
    # The generator's own CPU: it shares the load core with wrk and nginx.
    stats["cpu_s"] = round(time.process_time() - cpu, 2)
    print(json.dumps(stats), flush=True)  # (before the connections close)
    for link in links:
        link.close()
    return stats


PROBE = False


def generator_main(argv: list[str]) -> int:
    global PROBE
    port, key, agents, interval, duration, probe = argv
    PROBE = probe == "probe"
    asyncio.run(
        _heartbeats(int(port), key, int(agents), float(interval), float(duration))
    )
    return 0


def start_beats(
    args, port: int, key: Path, load: list[str], duration: float, probe: bool = False
):
    """The generator process, once its agents have joined (see `_heartbeats`)."""
    proc = subprocess.Popen(
        [*load, sys.executable, __file__, "--generate", str(port), str(key),
         str(args.agents), str(args.interval), str(duration),
         "probe" if probe else "beat"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stdout.readline()
    if not line.startswith('{"ready"'):
        proc.kill()
        raise SystemExit(f"heartbeat generator failed: {line!r}")
    joined = json.loads(line)["ready"]
    if joined["ok"] != args.agents:
        proc.kill()
        raise SystemExit(f"not every agent joined: {joined}")
    return proc


def finish_beats(proc: subprocess.Popen) -> dict:
    """The steady phase's counts, as soon as it ends (the process then closes
    its connections and exits)."""
    line = proc.stdout.readline()
    try:
        return json.loads(line)
    except ValueError:
        raise SystemExit(f"heartbeat generator failed: {line!r}") from None
    finally:
        proc.stdout.close()
        proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--generate"]:
        return generator_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument(
        "--node-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="chat goes to a node that answers after MS ms (herd sim, one token "
        "in MS ms) instead of nginx answering at once (0, the default: the "
        "router saturated by chat, the worst case)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure GET /healthz from the same agents' connections at the "
        "same rate: what the HTTP server and falcon cost per request, whatever "
        "the endpoint does",
    )
    args = parser.parse_args(argv)
    procs = Procs()
    try:
        with tempfile.TemporaryDirectory(prefix="herd-bench-disc-") as tmp:
            return bench(args, Path(tmp), procs)
    finally:
        procs.stop()


def bench(args: argparse.Namespace, tmp: Path, procs: Procs) -> int:
    pin = choose_pinning(args.pin, 1)
    print(f"mode: {pin.describe(1)}", flush=True)
    if pin.on:
        os.sched_setaffinity(0, set(pin.load))
    load = pin.load_cmd()
    ports = {"nginx": free_port(), "router": free_port()}
    ports["node"] = ports["nginx"] if not args.node_ms else free_port()
    log = open(tmp / "processes.log", "wb")  # noqa: SIM115 - closed with the procs
    # (The control phase's heartbeats: answered at once, on the load core.)
    sink = "    location = /fleet/heartbeat { return 200 '{\"admitted\":true}'; }\n"
    conf = nginx_conf(tmp, ports["nginx"])
    (tmp / "nginx.conf").write_text(
        conf.replace("    location = / {", sink + "    location = / {")
    )
    procs.start(
        [*load, "nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
        stdout=log,
        stderr=log,
    )
    wait_http(f"http://127.0.0.1:{ports['nginx']}/api/version")
    if args.node_ms:
        procs.start(
            [*load, *HERD, "sim", "--port", str(ports["node"]), "--models", MODEL,
             "--tps", f"{1000 / args.node_ms:g}", "--tokens", "1"],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{ports['node']}/api/version")
    key = tmp / "fleet.key"
    fleetkey.write(key, fleetkey.generate())
    manifest = tmp / "fleet.yaml"
    manifest.write_text(MANIFEST.format(model=MODEL, key=key, **ports))
    state = tmp / "state"
    env = {**os.environ, "HERD_ACCESS_LOG": "0", "HERD_LOG_LEVEL": "error"}
    subprocess.run(
        [*HERD, "apply", str(manifest), "--yes", "--state-dir", str(state)],
        check=True, capture_output=True, env=env, timeout=60,
    )  # fmt: skip
    router = procs.start(
        [*pin.server_cmd(), *HERD, "serve", "--state-dir", str(state), "--bind",
         f"127.0.0.1:{ports['router']}"],
        stdout=log, stderr=log, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{ports['router']}"
    wait_http(url + "/api/chat", body=CHAT_BODY.encode(), timeout=60)
    lua = tmp / "chat.lua"
    lua.write_text(WRK_LUA.format(body=CHAT_BODY))
    # Warm-up: every agent admitted once, pools and imports warm.
    warm = start_beats(args, ports["router"], key, load, args.interval + 1)
    run_wrk(url + "/api/chat", lua, 16, 2, pin=load)
    print(f"warm-up heartbeats: {finish_beats(warm)}", flush=True)
    nodes = json.loads(urllib_get(url + "/fleet/nodes"))["nodes"]
    print(f"router sees {len(nodes)} nodes ({args.agents} agents + 1 static)")

    rows: dict[str, list] = {
        "idle": [],
        "join": [],
        "beats": [],
        "floor": [],
        "chat": [],
        "both": [],
        "generator": [],
        "control": [],
    }
    for r in range(args.repeat):
        before = cpu_seconds(router.pid)
        time.sleep(args.duration)
        rows["idle"].append((cpu_seconds(router.pid) - before) / args.duration)

        before = cpu_seconds(router.pid)
        gen = start_beats(args, ports["router"], key, load, args.duration)
        joined = cpu_seconds(router.pid)
        rows["join"].append((joined - before) / args.agents)
        began = time.monotonic()
        beats = finish_beats(gen)
        spent = time.monotonic() - began
        rows["beats"].append((cpu_seconds(router.pid) - joined) / spent)

        if args.floor:
            gen = start_beats(args, ports["router"], key, load, args.duration, True)
            before, began = cpu_seconds(router.pid), time.monotonic()
            floor = finish_beats(gen)
            floor.pop("cpu_s", None)
            spent = time.monotonic() - began
            rows["floor"].append((cpu_seconds(router.pid) - before) / spent)
            print(f"floor probes: {floor}", flush=True)

        def chat() -> Any:
            return run_wrk(
                url + "/api/chat", lua, 16, args.duration, server=router.pid, pin=load
            )

        def chat_with_beats(port: int) -> tuple[Any, dict]:
            gen = start_beats(args, port, key, load, args.duration + 1)
            res = chat()
            counts = finish_beats(gen)
            rows["generator"].append(counts.pop("cpu_s", 0.0) / (args.duration + 1))
            return res, counts

        # Three chat phases, their order turned each run (a machine that gets
        # busier or quieter through a run then favours none): alone; with the
        # heartbeats; with the same generator beating at nginx instead (the
        # control: its cost on the load core, none on the router's).
        for phase in PHASES[r % 3 :] + PHASES[: r % 3]:
            if phase == "chat":
                rows["chat"].append(chat())
            elif phase == "both":
                res, both_beats = chat_with_beats(ports["router"])
                rows["both"].append(res)
            else:
                rows["control"].append(chat_with_beats(ports["nginx"])[0])
        beats.pop("cpu_s", None)
        print(
            f"run {r + 1}: idle {rows['idle'][-1]:.1%} of a core, "
            f"heartbeats {rows['beats'][-1]:.1%} ({beats}), "
            f"chat p50 {rows['chat'][-1].p50_us / 1000:.3f} ms "
            f"({rows['chat'][-1].rps:.0f} req/s, {rows['chat'][-1].cpu_us:.0f} us "
            f"router CPU/req, steal {rows['chat'][-1].steal:.0%}), "
            f"with heartbeats {rows['both'][-1].p50_us / 1000:.3f} ms "
            f"({rows['both'][-1].rps:.0f} req/s, steal {rows['both'][-1].steal:.0%}; "
            f"{both_beats}), with beats at nginx instead "
            f"{rows['control'][-1].p50_us / 1000:.3f} ms",
            flush=True,
        )
    idle = statistics.median(rows["idle"])
    beat_share = statistics.median(rows["beats"]) - idle
    p50 = statistics.median(w.p50_us for w in rows["chat"]) / 1000
    p50_both = statistics.median(w.p50_us for w in rows["both"]) / 1000
    rate = args.agents / args.interval
    print()
    print(f"heartbeats: {rate:.0f}/s from {args.agents} agents")
    print(
        f"router CPU for heartbeats: {beat_share:.1%} of one core "
        f"(busy {statistics.median(rows['beats']):.1%} minus idle {idle:.1%}); "
        f"{beat_share / rate * 1e6:.0f} us per heartbeat   target < 10%"
    )
    if rows["floor"]:
        floor = statistics.median(rows["floor"]) - idle
        print(
            f"floor (GET /healthz, same connections and rate): {floor:.1%} of one "
            f"core, {floor / rate * 1e6:.0f} us per request: the HTTP server and "
            f"falcon, before any heartbeat work"
        )
    print(
        f"joining, before each measured window: "
        f"{statistics.median(rows['join']) * 1e6:.0f} us of router CPU per agent "
        f"(new connection and whole heartbeat; once per agent start)"
    )
    chat_cpu = statistics.median(w.cpu_us for w in rows["chat"])
    print(
        f"one heartbeat costs the router {beat_share / rate * 1e6 / chat_cpu:.2f} "
        f"chat requests' CPU ({chat_cpu:.0f} us per chat request in the same run)"
    )
    print(
        f"chat p50 at c=16: {p50:.3f} ms alone, {p50_both:.3f} ms with heartbeats "
        f"(change {p50_both - p50:+.3f} ms, ratio {p50_both / p50:.3f})   "
        f"target < +{TARGET_P50_DELTA_MS} ms"
    )
    # A run's phases are neighbours in time: their differences drift less
    # with the machine's other load than the figures themselves.
    alone = _differences(rows["chat"], rows["both"])
    router = _differences(rows["control"], rows["both"])
    print(
        f"chat p50 change, paired by run: {_spread(alone)} ms against chat alone; "
        f"{_spread(router)} ms against chat with the same beats sent to nginx (the "
        f"router's share: the generator took "
        f"{statistics.median(rows['generator']):.1%} of the load core wrk and "
        f"nginx share, where a real fleet's agents are other hosts)"
    )
    if not args.node_ms:
        share = beat_share / max(1 - beat_share, 1e-9)
        print(
            f"(chat saturates the router here: a closed loop's p50 grows by about "
            f"p50 x share / (1 - share) = {p50 * share:.3f} ms for this share; "
            f"--node-ms 20 measures behind a node that takes time)"
        )
    met = beat_share < TARGET_CPU_SHARE and p50_both - p50 < TARGET_P50_DELTA_MS
    print("targets met" if met else "targets NOT met (shared machine? see steal)")
    return 0 if met else 1


def _differences(before: list, after: list) -> list[float]:
    """p50 of `after` minus p50 of `before`, run by run (ms)."""
    return [(b.p50_us - a.p50_us) / 1000 for a, b in zip(before, after, strict=True)]


def _spread(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):+.3f} (runs "
        + ", ".join(f"{v:+.3f}" for v in sorted(values))
        + ")"
    )


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


if __name__ == "__main__":
    sys.exit(main())
