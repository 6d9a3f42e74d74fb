"""Instructions per request of the router and of the floor, under callgrind.

    python tests/bench/count_router.py [--tree PATH] [--requests 2000]
        [--conc 1,16,64] [--only router|floor]

bench_router.py's CPU per request moves by a third between runs on a shared
machine; this counts instead (valgrind: user-space instructions, exact and
load-independent), so the router / floor ratio and two checkouts compare on a
busy machine. What it cannot see is the kernel's part: the syscalls (the
router's second hop to the node pays a send and a recv the floor never does),
so read its ratio next to bench_router.py's, not instead of it.

The same two servers as bench_router.py, each one gunicorn worker (herd's
worker class and config) in the process valgrind started
(tests/bench/lone_worker.py): the router over an nginx node that answers at
once, and the floor (a Falcon app answering the fixed reply itself). A client
here, at full speed, keeps --conc requests in flight on kept connections
(POST /api/chat, wrk's request), so at 1 every request arrives alone and at
16 or 64 the worker is saturated, as under wrk. After a warm-up, counted:
--requests requests at each concurrency, then as long again with no traffic
(the idle cost: health polls) taken off at its rate. --plain runs the workers
without valgrind (CPU time per request instead of Ir; py-spy on the printed
pid, with more --requests to give it time).
Everything listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_router import (  # noqa: E402
    CHAT_BODY,
    FIXED_REPLY,
    FLOOR_APP,
    MANIFEST,
    MODEL,
    STREAM_MODEL,
    Procs,
    _interrupt,
    free_port,
    nginx_conf,
    wait_http,
)
from tests.bench.count_heartbeat import (  # noqa: E402
    Counter,
    apply,
    listener,
    lone_worker,
    wait_up,
)

REQUEST = (
    b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(CHAT_BODY), CHAT_BODY.encode())
)


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"unexpected answer: {head[:80]!r}")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))
            return
    raise SystemExit("an answer without Content-Length")


async def _load(port: int, conc: int, requests: int) -> None:
    """`requests` requests, `conc` in flight, each connection kept."""
    links = [await asyncio.open_connection("127.0.0.1", port) for _ in range(conc)]
    share = [requests // conc + (i < requests % conc) for i in range(conc)]

    async def run(link, count: int) -> None:
        for _ in range(count):  # bounded by --requests
            await _one(*link)

    await asyncio.gather(*(run(link, n) for link, n in zip(links, share, strict=True)))
    for _, writer in links:
        writer.close()


def count(port: int, counter: Counter, conc: int, requests: int) -> float:
    """Instructions per request at `conc`, the idle rate taken off."""
    asyncio.run(_load(port, conc, min(requests, 200)))  # warm: pools, caches
    counter.zero()
    began = time.monotonic()
    asyncio.run(_load(port, conc, requests))
    busy = counter.dump()
    spent = time.monotonic() - began
    idle_span = min(spent, 10.0)
    counter.zero()
    began = time.monotonic()
    time.sleep(idle_span)
    idle = counter.dump() / (time.monotonic() - began)
    return (busy - idle * spent) / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[2]))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--conc", default="1,16,64")
    parser.add_argument("--only", choices=("router", "floor"))
    parser.add_argument(
        "--plain",
        action="store_true",
        help="no valgrind: the workers run at full speed and print their pid "
        "(for py-spy), and each window's worker CPU time is printed instead",
    )
    parser.add_argument(
        "--keep",
        help="move callgrind's dumps here (two per concurrency and server, in "
        "order: counted, idle) for callgrind_annotate",
    )
    args = parser.parse_args(argv)
    # SIGTERM/SIGHUP end the run like Ctrl-C: the `finally` stops the workers.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    levels = [int(c) for c in args.conc.split(",")]
    tree = Path(args.tree).resolve()
    python = tree / ".venv" / "bin" / "python"
    procs = Procs()
    figures: dict[tuple[str, int], float] = {}
    try:
        with tempfile.TemporaryDirectory(
            prefix="herd-count-router-", ignore_cleanup_errors=True
        ) as tmp_name:
            tmp = Path(tmp_name)
            listening = {name: listener() for name in ("router", "floor")}
            ports = {name: sock.getsockname()[1] for name, sock in listening.items()}
            ports["nginx"] = free_port()
            (tmp / "nginx.conf").write_text(nginx_conf(tmp, ports["nginx"]))
            log = open(tmp / "nginx.log", "wb")  # noqa: SIM115 - with the procs
            procs.start(
                ["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                stdout=log,
                stderr=log,
            )
            wait_http(f"http://127.0.0.1:{ports['nginx']}/api/version")
            # (The streaming node's port has no listener: its polls fail at once.)
            (tmp / "fleet.yaml").write_text(
                MANIFEST.format(
                    model=MODEL, stream_model=STREAM_MODEL, sim=free_port(), **ports
                )
            )
            env = apply(python, tree, tmp / "fleet.yaml", tmp / "state")
            (tmp / "floor_app.py").write_text(FLOOR_APP.format(reply=FIXED_REPLY))
            apps = {"router": (), "floor": ("--chdir", str(tmp), "floor_app:app")}
            for name, app in apps.items():
                if args.only and name != args.only:
                    continue
                port = ports[name]
                wrap = [] if args.plain else [
                    "valgrind", "--tool=callgrind",
                    f"--callgrind-out-file={tmp}/cg.%p"]  # fmt: skip
                worker = lone_worker(
                    procs, wrap, python, tree, tmp, listening.pop(name), env, app
                )
                url = f"http://127.0.0.1:{port}/api/chat"
                wait_up(tmp, port, url, worker, CHAT_BODY.encode())
                counter = Counter(worker.pid, tmp, times=args.plain)
                print(f"{name} worker pid {worker.pid}", flush=True)
                for conc in levels:
                    ir = count(ports[name], counter, conc, args.requests)
                    figures[name, conc] = ir
                    unit = "CPU us" if args.plain else "Ir"
                    print(f"{name:6} c{conc:<3} {ir:10,.0f} {unit}/request", flush=True)
            for sock in listening.values():  # (--only: the other's)
                sock.close()
            procs.stop()  # before the state directory goes
            if args.keep:
                keep = Path(args.keep)
                keep.mkdir(parents=True, exist_ok=True)
                for path in tmp.glob("cg.*"):
                    path.rename(keep / path.name)
    finally:
        procs.stop()
    if not args.only and not args.plain:
        print("\n| conc | floor Ir/req | router Ir/req | router - floor | ratio |")
        print("|---|---|---|---|---|")
        for conc in levels:
            floor, router = figures["floor", conc], figures["router", conc]
            print(
                f"| {conc} | {floor:,.0f} | {router:,.0f} | {router - floor:,.0f} "
                f"| {router / floor:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
