"""The heartbeat endpoint's own cost, in process: no sockets, no HTTP server.

    python tests/bench/bench_heartbeat.py [--agents 500] [--repeat 5]

Builds the router's WSGI app over a real state directory (real SQLite) and
calls it directly: --agents signed heartbeats, whole (~3 KB, models and all)
and light (~0.8 KB, the unchanged models left out, as `herd node` sends after
its first beat), each from its agent's own address. Prints the process CPU per
heartbeat (best of --repeat rounds) beside a baseline measured in the same
run: GET /healthz through the same app (falcon and the admission
middleware). Much less noisy than bench_discovery.py on a shared machine,
which measures the whole router (HTTP server included) under chat load.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from herd.discovery import fleetkey  # noqa: E402
from tests.bench.bench_discovery import MANIFEST, agent_body  # noqa: E402
from tests.bench.bench_router import HERD, MODEL  # noqa: E402


def build_app(tmp: Path):
    key_path = tmp / "fleet.key"
    fleetkey.write(key_path, fleetkey.generate())
    manifest = tmp / "fleet.yaml"
    manifest.write_text(MANIFEST.format(model=MODEL, key=key_path, router=1, node=2))
    state = tmp / "state"
    env = {**os.environ, "HERD_APPLY_NODES": "0"}
    subprocess.run(
        [*HERD, "apply", str(manifest), "--yes", "--state-dir", str(state)],
        check=True, capture_output=True, env=env, timeout=60,
    )  # fmt: skip
    from herd.discovery.membership import Membership
    from herd.router.app import create_app
    from herd.router.observe.traces import TraceLog
    from herd.router.reload import PointerSource
    from herd.router.routing.proxy import Upstream

    app = create_app(
        PointerSource(state),
        TraceLog(state),
        Upstream(),
        background=False,
        membership=Membership(state / "discovery.db", shared=False),
    )
    return app, fleetkey.load(key_path)[0]


def environ(method: str, path: str, source: str, body: bytes = b"") -> dict:
    return {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
        "REMOTE_ADDR": source, "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "11435",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }  # fmt: skip


def call(app, env: dict) -> tuple[str, bytes]:
    status: list[str] = []
    data = b"".join(app(env, lambda s, headers, exc=None: status.append(s)))
    return status[0], data


def source(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def per_call(run, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.process_time()
        run()
        best = min(best, (time.process_time() - began) / n)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    logging.getLogger("herd.audit").setLevel(logging.ERROR)  # 500 joins: quiet
    n = args.agents
    with tempfile.TemporaryDirectory(prefix="herd-bench-hb-") as tmp:
        app, key = build_app(Path(tmp))
        whole = [agent_body(i) for i in range(n)]
        light = [agent_body(i, partial=True) for i in range(n)]

        def beats(bodies: list[bytes]) -> None:
            for i, body in enumerate(bodies):
                env = environ("POST", "/fleet/heartbeat", source(i), body)
                for name, value in fleetkey.sign(key, body, time.time()).items():
                    env["HTTP_" + name.upper().replace("-", "_")] = value
                status, data = call(app, env)
                if not status.startswith("200") or b'"admitted":true' not in data:
                    raise SystemExit(f"heartbeat refused: {status} {data!r}")

        def probes() -> None:
            for i in range(n):
                status, _ = call(app, environ("GET", "/healthz", source(i)))
                assert status.startswith("200"), status

        beats(whole)  # every agent admitted once
        results = {
            "healthz (baseline)": per_call(probes, n, args.repeat),
            "whole heartbeat": per_call(lambda: beats(whole), n, args.repeat),
            "light heartbeat": per_call(lambda: beats(light), n, args.repeat),
        }
    base = results["healthz (baseline)"]
    for name, cost in results.items():
        print(f"{name:20} {cost * 1e6:7.0f} us CPU   {cost / base:5.2f} x baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
