"""Instructions per heartbeat in the real router worker, under callgrind.

    python tests/bench/count_heartbeat.py [--tree PATH] [--agents 20]
        [--beats 100] [--gap 0.1,0.3]

Exact and load-independent (valgrind counts instructions, not time), so two
checkouts compare on a busy machine where bench_discovery.py's CPU shares
drift. `--tree` is the checkout to serve (its own .venv/bin/python, its
etc/gunicorn.conf.py); the generator runs here. Everything is on 127.0.0.1
and killed at the end.

One gunicorn worker (herd's worker class and config) runs under callgrind,
in the process valgrind started (tests/bench/lone_worker.py: no fork).
--agents agents join (a whole heartbeat each, from their own loopback address
on a keep-alive connection, as in bench_discovery.py), send a few light beats
to warm up, then, counted, for each --gap: --beats light (partial) signed
heartbeats, round robin over the connections, one at a time --gap seconds
apart, so each is a lone request per wake-up as when 500 agents beat at
250/s. Then as long as the longest window with no connections (the idle
cost: health poller, checker). Printed per gap: Ir per beat in the window,
and with the idle window's Ir per second taken off (what bench_discovery.py
calls the heartbeats' cost).

Some work runs at most every so often while beats arrive (the membership's
batched write and expiry, every 0.25 s): at a gap of 0.1-0.5 s it lands on
nearly every beat, at 250 beats/s on one in sixty. So two gaps are counted
and per beat = fixed + rate x gap is fitted; the fit's figure at 250 beats/s
is the one to compare with bench_discovery.py (valgrind runs the worker ~50x
slower, so the real gap of 4 ms cannot be counted directly). --probe counts
GET /healthz instead (the worker and falcon alone). --strace FILE or --plain
run the worker without valgrind and print the windows' times and its user and
system CPU (syscalls per beat in strace's log; py-spy on the printed pid).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from herd.discovery import fleetkey  # noqa: E402
from tests.bench import bench_discovery  # noqa: E402
from tests.bench.bench_discovery import (  # noqa: E402
    MANIFEST,
    Link,
    _beat,
    _source,
    agent_body,
)
from tests.bench.bench_router import (  # noqa: E402
    MODEL,
    Procs,
    _interrupt,
    free_port,
    wait_http,
)

TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.M)


class Counter:
    """callgrind_control on one process: zero, then dump and read Ir (with
    --strace: only the wall-clock times of both, to cut strace's log)."""

    def __init__(self, pid: int, out: Path, times: bool = False):
        self.pid, self.out, self.times = pid, out, times

    def zero(self) -> None:
        if self.times:
            print(f"window from {time.time():.6f}", flush=True)
            self._cpu = _cpu_us(self.pid)
            return
        self._control("-z")

    def dump(self) -> int:
        if self.times:
            print(f"window to {time.time():.6f}", flush=True)
            spent = [b - a for a, b in zip(self._cpu, _cpu_us(self.pid), strict=True)]
            print(f"worker CPU user {spent[0]:,} us, system {spent[1]:,} us")
            return sum(spent)  # (CPU us, not Ir)
        before = set(self.out.glob(f"cg.{self.pid}.*"))
        self._control("-d")
        for _ in range(600):  # bounded: the dump is written before -d returns
            new = set(self.out.glob(f"cg.{self.pid}.*")) - before
            if new:
                data = max(new, key=lambda p: p.stat().st_mtime).read_bytes()
                found = TOTALS.search(data)
                if found:
                    return int(found.group(1))
            time.sleep(0.1)
        raise SystemExit("callgrind wrote no dump")

    def _control(self, flag: str) -> None:
        done = subprocess.run(
            ["callgrind_control", flag, str(self.pid)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if "OK" not in done.stdout:  # (it exits 0 when it found no process)
            raise SystemExit(f"callgrind_control {flag}: {done.stdout}{done.stderr}")


def _cpu_us(pid: int) -> tuple[int, int]:
    """User and system CPU of the process so far, in microseconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = 1_000_000 // os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick


async def drive(args, port: int, key_path: Path, counter: Counter) -> None:
    key = fleetkey.load(str(key_path))[0]
    links = [Link(port, _source(i)) for i in range(args.agents)]
    stats = {"ok": 0, "refused": 0, "errors": 0, "sent": 0, "connects": 0}
    for i, link in enumerate(links):
        await _beat(link, key, agent_body(i), stats)
    light = [agent_body(i, partial=True) for i in range(args.agents)]
    gaps = [float(g) for g in args.gap.split(",")]
    for i, link in enumerate(links * 2):  # warm: every agent's light path twice
        await _beat(link, key, light[i % args.agents], stats)
        await asyncio.sleep(gaps[0])
    if stats["ok"] != 3 * args.agents:
        raise SystemExit(f"agents did not join: {stats}")
    bench_discovery.PROBE = args.probe
    windows = []  # (gap, units counted, seconds, beats answered)
    for gap in gaps:
        answered = stats["ok"]
        counter.zero()
        began = time.monotonic()
        due = began
        for n in range(args.beats):  # bounded by --beats
            i = n % args.agents
            await _beat(links[i], key, light[i], stats)
            due += gap
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        counted = counter.dump()
        windows.append((gap, counted, time.monotonic() - began, stats["ok"] - answered))
    bench_discovery.PROBE = False
    for link in links:
        link.close()
    await asyncio.sleep(1.0)  # the worker sees the closes
    counter.zero()
    began = time.monotonic()
    await asyncio.sleep(max(w[2] for w in windows))
    idle_rate = counter.dump() / (time.monotonic() - began)
    unit = "us" if counter.times else "Ir"
    print(f"idle {idle_rate:,.0f} {unit}/s ({stats})")
    per_beat = []
    for gap, counted, spent, taken in windows:
        beat = (counted - idle_rate * spent) / args.beats
        per_beat.append(beat)
        print(
            f"gap {gap} s: beats taken {taken}/{args.beats} in {spent:.1f} s; "
            f"window {counted:,} {unit} = {counted / args.beats:,.0f} per beat; "
            f"minus idle: {beat:,.0f} {unit}/beat"
        )
    if len(gaps) >= 2 and gaps[0] != gaps[-1]:
        # Work that runs at most every so often while beats arrive (the
        # membership's batched write, every CHECK_S) lands on nearly every
        # beat at these gaps, but on one beat in dozens at bench_discovery's
        # 250 beats/s: fit per beat = fixed + rate x gap and read it there.
        rate = (per_beat[-1] - per_beat[0]) / (gaps[-1] - gaps[0])
        fixed = per_beat[0] - rate * gaps[0]
        print(
            f"fit: {fixed:,.0f} {unit} per beat + {rate:,.0f} {unit} per second of "
            f"beating; at bench_discovery's 250 beats/s: "
            f"{fixed + rate / 250:,.0f} {unit}/beat"
        )


def apply(python: Path, tree: Path, manifest: Path, state: Path) -> dict[str, str]:
    """`herd apply` of `manifest` into `state` with `tree`'s herd (the plan
    recorded, nodes untouched); the environment a worker then serves it with."""
    env = {
        **os.environ,
        "HERD_ACCESS_LOG": "0",
        "HERD_LOG_LEVEL": "error",
        "HERD_APPLY_NODES": "0",
        "HERD_STATE_DIR": str(state),
    }
    subprocess.run(
        [str(python), "-m", "herd", "apply", str(manifest), "--yes",
         "--state-dir", str(state)],
        check=True, capture_output=True, env=env, timeout=120, cwd=tree,
    )  # fmt: skip
    return env


def listener() -> socket.socket:
    """A listening socket on a free loopback port, held from now on: the
    worker inherits it (`lone_worker`), so no other run can take the port
    while valgrind starts (a free port picked by number could be taken by a
    concurrent run in between, and its worker answer this run's requests)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def lone_worker(
    procs: Procs,
    wrap: list[str],
    python: Path,
    tree: Path,
    tmp: Path,
    listening: socket.socket,
    env: dict[str, str],
    app: tuple[str, ...] = (),
) -> subprocess.Popen:
    """One gunicorn worker of `tree` (its config; `app` instead of the router
    if given) serving the socket `listening` (then closed here), in the
    process `wrap` (valgrind, strace or nothing) starts:
    tests/bench/lone_worker.py. Its output goes to tmp/worker-PORT.log."""
    port = listening.getsockname()[1]
    fd = listening.fileno()
    log = open(tmp / f"worker-{port}.log", "wb")  # noqa: SIM115 - with the procs
    try:
        return procs.start(
            [*wrap, str(python), str(Path(__file__).with_name("lone_worker.py")),
             "--config", str(tree / "etc" / "gunicorn.conf.py"), "--bind",
             f"fd://{fd}", "--workers", "1", *app],
            stdout=log, stderr=log, env=env, cwd=tree, pass_fds=(fd,),
        )  # fmt: skip
    finally:
        listening.close()


def wait_up(
    tmp: Path,
    port: int,
    url: str,
    worker: subprocess.Popen,
    body: bytes | None = None,
) -> None:
    """Wait (valgrind starts slowly) until `lone_worker`'s `worker` on `port`
    answers `url`; if it exits or never answers, its log's end goes to stderr."""
    deadline = time.monotonic() + 900
    while True:
        try:
            wait_http(url, body=body, timeout=2)
            return
        except RuntimeError:
            if worker.poll() is None and time.monotonic() < deadline:
                continue
            sys.stderr.write((tmp / f"worker-{port}.log").read_text()[-3000:])
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[2]))
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--beats", type=int, default=100)
    parser.add_argument(
        "--gap",
        default="0.1,0.3",
        help="seconds between beats; two or more (comma-separated): a window "
        "each, and the per-beat cost fitted to bench_discovery's rate",
    )
    parser.add_argument("--keep", help="copy callgrind's files to this directory")
    parser.add_argument(
        "--strace",
        metavar="FILE",
        help="run the worker under `strace -tt -o FILE` instead of callgrind "
        "(syscalls per beat: count the lines between the printed times)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="counted: GET /healthz instead of heartbeats, on the same connections "
        "at the same pace (the worker and falcon per lone request, no endpoint)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="no valgrind: the worker runs at full speed (for py-spy on its pid)",
    )
    args = parser.parse_args(argv)
    # SIGTERM/SIGHUP end the run like Ctrl-C: the `finally` stops the workers.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    tree = Path(args.tree).resolve()
    python = tree / ".venv" / "bin" / "python"
    procs = Procs()
    try:
        # (A worker that outlives an error may still write there.)
        with tempfile.TemporaryDirectory(
            prefix="herd-count-hb-", ignore_cleanup_errors=True
        ) as tmp_name:
            tmp = Path(tmp_name)
            key = tmp / "fleet.key"
            fleetkey.write(key, fleetkey.generate())
            listening = listener()
            port = listening.getsockname()[1]
            manifest = tmp / "fleet.yaml"
            # (The static node's port has no listener: its polls fail at once.)
            manifest.write_text(
                MANIFEST.format(model=MODEL, key=key, router=port, node=free_port())
            )
            env = apply(python, tree, manifest, tmp / "state")
            env["HERD_BIND"] = f"127.0.0.1:{port}"
            if args.plain:
                wrap = []
            elif args.strace:
                wrap = ["strace", "-f", "-tt", "-o", args.strace]
            else:
                wrap = ["valgrind", "--tool=callgrind",
                        f"--callgrind-out-file={tmp}/cg.%p"]  # fmt: skip
            master = lone_worker(procs, wrap, python, tree, tmp, listening, env)
            wait_up(tmp, port, f"http://127.0.0.1:{port}/healthz", master)
            counter = Counter(master.pid, tmp, times=not wrap[:1] == ["valgrind"])
            print(f"worker pid {master.pid}", flush=True)
            asyncio.run(drive(args, port, key, counter))
            if args.keep:
                keep = Path(args.keep)
                keep.mkdir(parents=True, exist_ok=True)
                for path in tmp.glob(f"cg.{counter.pid}.*"):
                    path.rename(keep / path.name)
            procs.stop()  # before its state directory goes
    finally:
        procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
