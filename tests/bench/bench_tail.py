"""Tail benchmark: the router's p50/p99/p99.9 and loop stalls, against a baseline
checkout in the same run.

    python tests/bench/bench_tail.py --baseline /path/to/other/checkout
    python tests/bench/bench_tail.py --nodes 2 --duration 3 --rounds 2

Needs `nginx` and `wrk`, like tests/bench/bench_router.py (whose helpers it
uses). nginx answers as `--nodes` zero-cost Ollama nodes (one port each, all
serving the bench model) on 127.0.0.1; the manifest is applied into a temp
state dir per variant, and `herd serve` (one gevent worker, pinned to the
first core like bench_router) runs each variant in turn: this tree, and with
`--baseline DIR` the herd package of DIR (put first on PYTHONPATH, so DIR's
own etc/gunicorn.conf.py too). Each round measures every variant back to
back at c1, c16 and c64 (`--rounds` pairs: on a shared machine read the
pairs, not one figure). Every router runs the loop-stall probe
(herd.router.observe.stallprobe; the baseline must have it too): its stalls
by cause, and who held the loop, print per run, so a difference shows in the
router's own figures (loop, thread) even when the machine's noise (off)
swamps the percentiles. Many nodes make the health poller's work visible:
each node's answers are parsed on the loop every second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import bench_router as br  # noqa: E402

MANIFEST_HEAD = """\
apiVersion: herd/v1
kind: Fleet
metadata:
  name: tail
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
"""
NODE = """\
  - name: n{index}
    url: http://127.0.0.1:{port}
    max_concurrency: 4096
"""
MODELS = """\
models:
  - name: {model}
    place:
      nodes: [{nodes}]
"""
CONCURRENCY = (1, 16, 64)
#: The idle phase's key in the results: no load, so every stall of the loop
#: is background work (polls, trace flushes, timers) or the machine.
IDLE = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--nodes", type=int, default=40, help="nodes in the manifest")
    parser.add_argument(
        "--rounds", type=int, default=2, help="back-to-back rounds of every variant"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout (with herd/ and etc/) to compare against, e.g. a "
        "`git worktree add` of main",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.duration < 1 or args.rounds < 1:
        parser.error("--nodes, --duration and --rounds must be 1 or more")
    if args.baseline is not None and not (args.baseline / "herd").is_dir():
        parser.error(f"--baseline {args.baseline}: no herd/ package there")
    missing = [tool for tool in ("nginx", "wrk") if not shutil.which(tool)]
    if missing:
        print(
            f"missing {', '.join(missing)}: apt-get install -y nginx-light wrk",
            file=sys.stderr,
        )
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="herd-tail-"))
    procs = br.Procs()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, br._interrupt)
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


def bench(args: argparse.Namespace, tmp: Path, procs: br.Procs) -> int:
    pin = br.choose_pinning(True, 1)
    print(f"mode: {pin.describe(1)}; {args.nodes} node(s)", flush=True)
    if pin.on:
        os.sched_setaffinity(0, set(pin.load))
    log = open(tmp / "processes.log", "wb")  # noqa: SIM115 - closed at exit
    ports = [br.free_port() for _ in range(args.nodes)]
    (tmp / "nginx.conf").write_text(br.nginx_conf(tmp, *ports))
    procs.start(
        [*pin.load_cmd(), "nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
        stdout=log,
        stderr=log,
    )
    br.wait_http(f"http://127.0.0.1:{ports[-1]}/api/version")
    lua = tmp / "chat.lua"
    lua.write_text(br.WRK_LUA.format(body=br.CHAT_BODY))
    variants = [("this", None)]
    if args.baseline is not None:
        variants.insert(0, ("baseline", args.baseline.resolve()))
    results: dict[tuple[str, int], list[br.Wrk]] = {}
    for round_no in range(1, args.rounds + 1):
        for name, tree in variants:
            print(f"round {round_no}: {name}", flush=True)
            runs = measure(name, tree, args, tmp, procs, pin, log, ports, lua)
            for conns, res in runs.items():
                results.setdefault((name, conns), []).append(res)
    report(results, variants, args)
    return 0


def measure(
    name: str,
    tree: Path | None,
    args: argparse.Namespace,
    tmp: Path,
    procs: br.Procs,
    pin: br.Pinning,
    log,
    ports: list[int],
    lua: Path,
) -> dict[int, br.Wrk]:
    """Start variant `name`'s router, run wrk at every concurrency, stop it."""
    port = br.free_port()
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    manifest = work / "fleet.yaml"
    manifest.write_text(
        MANIFEST_HEAD.format(router=port)
        + "".join(NODE.format(index=i, port=p) for i, p in enumerate(ports))
        + MODELS.format(
            model=br.MODEL, nodes=", ".join(f"n{i}" for i in range(len(ports)))
        )
    )
    env = {**os.environ, "HERD_ACCESS_LOG": "0", "HERD_LOG_LEVEL": "warning"}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    probe = work / "stalls"
    env["HERD_STALL_PROBE"] = str(probe)
    state = work / "state"
    subprocess.run(
        [*br.HERD, "apply", str(manifest), "--yes", "--state-dir", str(state)],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    router = br.start_router(procs, state, port, 1, pin, log, env)
    url = f"http://127.0.0.1:{port}"
    out: dict[int, br.Wrk] = {}
    try:
        br.wait_http(url + "/api/chat", body=br.CHAT_BODY.encode(), timeout=60)
        br.run_wrk(url + "/api/chat", lua, 16, 2, pin=pin.load_cmd())  # warm-up
        out[IDLE] = idle(router.pid, probe, args.duration)
        print(f"  {name:8} idle  {br.stall_line(out[IDLE].stalls)}", flush=True)
        for conns in CONCURRENCY:
            res = br.run_wrk(
                url + "/api/chat",
                lua,
                conns,
                args.duration,
                server=router.pid,
                pin=pin.load_cmd(),
                probe=probe,
            )
            out[conns] = res
            print(
                f"  {name:8} c{conns:<3} {res.rps:7.0f} req/s  p50/p99/p99.9 "
                f"{br._ms(res)} ms  cpu {res.cpu_us:5.0f} us/req  "
                f"steal {100 * res.steal:3.0f}%  errors {res.non2xx + res.errors}",
                flush=True,
            )
            print(f"           {br.stall_line(res.stalls)}", flush=True)
    finally:
        br._killpg(router.pid, signal.SIGTERM)
        try:
            router.wait(timeout=30)
        except subprocess.TimeoutExpired:
            br._killpg(router.pid, signal.SIGKILL)
            router.wait(timeout=10)
    return out


def idle(pid: int, probe: Path, duration: int) -> br.Wrk:
    """The router's loop stalls and CPU over `duration` seconds without load."""
    import time

    stalls0, cpu0 = br.read_stalls(probe), br.cpu_seconds(pid)
    time.sleep(duration)
    cpu1 = br.cpu_seconds(pid)
    time.sleep(2 * br.STALL_DUMP_S)
    return br.Wrk(
        requests=0,
        duration_us=duration * 1_000_000,
        p50_us=0.0,
        p99_us=0.0,
        p999_us=0.0,
        non2xx=0,
        errors=0,
        cpu_s=cpu1 - cpu0,
        stalls=br.stalls_between(stalls0, br.read_stalls(probe)),
    )


def report(
    results: dict[tuple[str, int], list[br.Wrk]],
    variants: list[tuple[str, Path | None]],
    args: argparse.Namespace,
) -> None:
    print(f"\n{args.nodes} node(s), {args.duration} s per run, one row per round\n")
    print(
        "| conc | variant | req/s | p50 / p99 / p99.9 ms | p99 - p50 ms | "
        "CPU us/req | stalls >1 ms loop / thread / off | poll CPU ms/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for conns in CONCURRENCY:
        for name, _ in variants:
            for res in results.get((name, conns), []):
                print(
                    f"| {conns} | {name} | {res.rps:.0f} | {br._ms(res)} | "
                    f"{(res.p99_us - res.p50_us) / 1000:.3f} | {res.cpu_us:.0f} | "
                    f"{_stalls(res)} | {_poll_ms(res, args.duration):.1f} |"
                )
    print(
        "\nidle (no requests: every loop stall is background work or the "
        "machine), one row per round\n"
    )
    print(
        "| variant | router CPU ms/s | loop stalls > 0.5 ms (worst) | "
        "stalls >1 ms loop / thread / off | poll CPU ms/s |"
    )
    print("|---|---|---|---|---|")
    for name, _ in variants:
        for res in results.get((name, IDLE), []):
            print(
                f"| {name} | {res.cpu_s * 1000 / args.duration:.1f} | "
                f"{_loop_stalls(res)} | {_stalls(res)} | "
                f"{_poll_ms(res, args.duration):.1f} |"
            )
    print("\n(c0 below: the idle phase)")
    kept = {key: runs for key, runs in results.items() if runs}
    br.stall_table({key: runs[-1] for key, runs in kept.items()})


def _stalls(res: br.Wrk) -> str:
    from herd.router.observe.stallprobe import EDGES_MS, KINDS

    if not res.stalls:
        return "-"
    over = EDGES_MS.index(1.0) + 1
    return " / ".join(str(sum(res.stalls[kind][over:])) for kind in KINDS)


def _loop_stalls(res: br.Wrk) -> str:
    """Loop stalls over 0.5 ms: count and the longest bucket reached."""
    from herd.router.observe.stallprobe import EDGES_MS, LABELS

    if not res.stalls:
        return "-"
    loop = res.stalls["loop"]
    first = EDGES_MS.index(0.5) + 1
    worst = max((i for i, n in enumerate(loop) if n), default=0)
    return f"{sum(loop[first:])} (worst {LABELS[worst]} ms)"


def _poll_ms(res: br.Wrk, duration: int) -> float:
    """CPU ms per second the health poller's greenlets held the loop."""
    if not res.stalls:
        return 0.0
    spent = sum(
        ms for who, ms in res.stalls["run_ms"].items() if who.startswith("StaticPoller")
    )
    return spent / duration


if __name__ == "__main__":
    sys.exit(main())
