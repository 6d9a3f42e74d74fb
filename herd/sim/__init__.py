"""`herd sim`: a simulated Ollama node over real HTTP, for demos, tests and benchmarks.

It answers every route the router proxies (/api/chat, /api/generate, /api/embed,
/api/embeddings, /api/tags, /api/ps, /api/show, /api/version, HEAD/GET /) with
the exact shapes of Ollama (shared reference §1), deterministic content
(herd.sim.models) streamed at `--tps` tokens per second, and fault modes to test
failover. Loopback-only control routes:

    POST /_sim/fault   {"mode": "ok|slow|hang|error|cut-mid-stream|garbage",
                        "after_chunks": 2, "delay_s": 5, "times": null,
                        "paths": ["/api/chat", ...] or ["*"]}
                       (default paths: the inference routes; "times": N faults the
                       next N requests only)
    GET  /_sim/fault   the current fault;   GET /_sim/stats   requests served
    DELETE /_sim/stats reset the counters

Served with gevent's WSGI server + Falcon (herd.sim.app), one greenlet per
connection; gevent is imported only when the command runs, never by `herd.cli`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from herd import hosts
from herd.errors import ConfigError
from herd.sim import models as sm
from herd.sim.store import SimStore

FAULTS = ("ok", "slow", "hang", "error", "cut-mid-stream", "garbage")
INFERENCE = (
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
)
VERSION = "0.33.0"
_DURATION = re.compile(r"^(-?)((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+)\Z")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


class SimError(Exception):
    """An Ollama error reply: `{"error": message}` with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Fault:
    """How the node misbehaves, on which paths, for how many requests."""

    mode: str = "ok"
    after_chunks: int = 2
    delay_s: float = 5.0
    times: int | None = None
    paths: tuple[str, ...] = INFERENCE

    def applies(self, path: str) -> bool:
        return self.mode != "ok" and ("*" in self.paths or path in self.paths)

    @classmethod
    def parse(cls, doc: Any) -> Fault:
        if not isinstance(doc, dict) or doc.get("mode") not in FAULTS:
            raise SimError(400, f"mode must be one of {', '.join(FAULTS)}")
        unknown = set(doc) - {"mode", "after_chunks", "delay_s", "times", "paths"}
        if unknown:
            raise SimError(400, f"unknown fault field(s): {', '.join(sorted(unknown))}")
        paths = doc.get("paths") or INFERENCE
        if not isinstance(paths, list | tuple) or not all(
            isinstance(p, str) for p in paths
        ):
            raise SimError(400, 'paths must be a list of route paths, or ["*"]')
        try:
            return cls(
                mode=doc["mode"],
                after_chunks=int(doc.get("after_chunks", 2)),
                delay_s=float(doc.get("delay_s", 5.0)),
                times=None if doc.get("times") is None else int(doc["times"]),
                paths=tuple(paths),
            )
        except (TypeError, ValueError) as ex:
            raise SimError(400, f"bad fault value: {ex}") from ex


@dataclass
class SimState:
    """Everything the sim node knows: its models, speed, fault and counters."""

    models: dict[str, sm.SimModel]
    tps: float = 50.0
    tokens: int | None = None
    seed: int = 0
    fault: Fault = field(default_factory=Fault)
    loaded: dict[str, float] = field(default_factory=dict)  # name -> expiry (epoch)
    requests: Counter = field(default_factory=Counter)
    by_model: Counter = field(default_factory=Counter)
    active: int = 0
    #: The on-disk store /api/pull, /api/copy and /api/delete work on (None:
    #: name-only models, no model management). Its models join `models`.
    store: SimStore | None = None
    #: Range part size for pulls (None: Ollama's 100 MB..1 GB parts).
    part_bytes: int | None = None
    #: Pull speed limit in bytes per second (None: none; a slow network).
    pull_rate: float | None = None
    #: Blob bytes all pulls have downloaded (a resumed pull adds only the rest).
    pulled_bytes: int = 0
    #: List `capabilities` in /api/tags (older Ollama releases list them only
    #: in /api/show).
    tag_capabilities: bool = True

    def refresh(self) -> None:
        """Re-read the store: its models replace the stored entries in `models`."""
        if self.store is None:
            return
        for name in [n for n, m in self.models.items() if m.stored_digest]:
            del self.models[name]
        for entry in self.store.models():
            key = sm.normalize(entry.name)
            self.models[key] = sm.SimModel(
                key,
                stored_digest=entry.digest,
                stored_size=entry.size,
                stored_at=entry.modified,
            )
        for name in [n for n in self.loaded if n not in self.models]:
            del self.loaded[name]

    @classmethod
    def from_names(cls, names: list[str], **kwargs: Any) -> SimState:
        models = {
            sm.normalize(n): sm.SimModel(sm.normalize(n)) for n in names if n.strip()
        }
        return cls(models=models, **kwargs)

    def model(self, name: Any, route: str) -> sm.SimModel:
        found = self.models.get(sm.normalize(name)) if isinstance(name, str) else None
        if found:
            return found
        if route in ("/api/embed", "/api/embeddings"):
            raise SimError(
                404, f"model {json.dumps(name)} not found, try pulling it first"
            )
        if route == "/api/show":
            raise SimError(404, f"model '{sm.normalize(str(name or ''))}' not found")
        if route == "/api/chat" and not name:
            raise SimError(400, "model is required")
        raise SimError(404, f"model '{name}' not found")

    def take_fault(self, path: str) -> Fault | None:
        fault = self.fault
        if not fault.applies(path):
            return None
        if fault.times is not None:
            left = fault.times - 1
            self.fault = replace(fault, times=left) if left > 0 else Fault()
        return fault

    def touch(self, model: sm.SimModel, keep_alive: Any) -> float:
        """Mark `model` loaded until keep_alive expires; the simulated load time."""
        seconds = parse_keep_alive(keep_alive)
        cold = model.name not in self.loaded or self.loaded[model.name] < time.time()
        if seconds == 0:
            self.loaded.pop(model.name, None)
        else:
            self.loaded[model.name] = time.time() + (1e10 if seconds < 0 else seconds)
        return 0.8 if cold else 0.002

    def stats(self) -> dict[str, Any]:
        return {
            "requests": sum(self.requests.values()),
            "paths": dict(self.requests),
            "models": dict(self.by_model),
            "active": self.active,
            "pulled_bytes": self.pulled_bytes,
            "fault": self.fault_doc(),
        }

    def fault_doc(self) -> dict[str, Any]:
        doc = self.fault.__dict__.copy()
        doc["paths"] = list(self.fault.paths)
        return doc


def parse_keep_alive(value: Any) -> float:
    """Seconds (negative = forever) from a number or a Go duration string."""
    if value is None:
        return 300.0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SimError(400, "json: cannot unmarshal keep_alive")
    if not isinstance(value, str):
        return float(value)
    if value in ("0", "-0"):
        return 0.0
    match = _DURATION.match(value.strip())
    if not match:
        raise SimError(400, f'time: missing unit in duration "{value}"')
    total = sum(
        float(n) * _UNITS[u]
        for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", match.group(2))
    )
    return -total if match.group(1) else total


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; print one ready line with the bound address."""
    import signal
    import socket

    import gevent
    from gevent.event import Event
    from gevent.pywsgi import WSGIServer

    from herd.sim.app import create_app

    names = [n for n in args.models.split(",") if n.strip()]
    state = SimState.from_names(names, tps=args.tps, tokens=args.tokens, seed=args.seed)
    state.fault = Fault(mode=args.fault)
    state.tag_capabilities = not args.tags_without_capabilities
    if args.store:
        free = None if args.disk_free_mb is None else int(args.disk_free_mb * 1e6)
        state.store = SimStore(Path(args.store), free_bytes=free)
        state.part_bytes = int(args.part_mb * 1e6) if args.part_mb else None
        state.pull_rate = args.pull_mb_per_s * 1e6 if args.pull_mb_per_s else None
        state.refresh()
    host = hosts.lookup(args.host)
    if host is None:
        raise ConfigError(f"--host: {hosts.unresolvable(args.host)}")
    # SERVER_NAME given, so gevent does not ask for the address's FQDN (a
    # reverse-DNS query at start-up: herd sends nothing to a resolver).
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip() or None
        except OSError as ex:
            raise ConfigError(f"--token-file: {ex.strerror or ex}") from ex
    server = WSGIServer(
        (host, args.port),
        create_app(state, api=args.api, token=token),
        log=None,
        backlog=4096,
        environ={"SERVER_NAME": host},
    )
    try:
        server.init_socket()
    except OSError as ex:
        raise ConfigError(
            f"cannot listen on {host}:{args.port}: {ex.strerror or ex}"
        ) from ex
    # Accepted sockets inherit this: without it, Nagle + delayed ACK add ~40 ms
    # to every keep-alive reply and streamed chunk.
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = Event()
    # Signal handlers only set a flag; the main greenlet does the shutdown.
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    server.start()
    host, port = server.address[:2]
    face = f"Ollama {VERSION}" if args.api == "ollama" else "OpenAI-compatible"
    print(
        f"herd sim: {face} simulation on http://{host}:{port} "
        f"models={','.join(state.models)} tps={args.tps:g} fault={args.fault}",
        flush=True,
    )
    stop.wait()
    server.stop(timeout=1)
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `herd sim`."""
    from herd.cli import add_command

    parser = add_command(
        sub,
        "sim",
        run,
        help="run a simulated Ollama node (real HTTP, deterministic answers) for "
        "demos, tests and benchmarks",
        examples="""\
  herd sim                                   llama3.2:3b + nomic-embed-text on :11434
  herd sim --port 11500 --models qwen3:0.6b,llava:7b --tps 20
  herd sim --port 0 --fault cut-mid-stream   pick a free port, break every stream
  herd sim --tags-without-capabilities       older Ollama: capabilities in /api/show
  herd sim --models '' --store /tmp/node1    start empty; models arrive by /api/pull
  herd sim --api openai --port 8000 --models qwen3-asr,flux-schnell,Qwen/Qwen3-8B
                                             an OpenAI-compatible server (vLLM-like)
  curl -d '{"mode":"hang"}' localhost:11434/_sim/fault    switch fault at runtime
  curl localhost:11434/_sim/stats                         requests served""",
        parents=[common],
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--api",
        choices=("ollama", "openai"),
        default="ollama",
        help="the API to speak: Ollama's (default) or an OpenAI-compatible "
        "server's (/v1/models, /health, chat, completions, embeddings, images, "
        "audio)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="require `Authorization: Bearer TOKEN` (the file's content) on "
        "the OpenAI routes",
    )
    parser.add_argument(
        "--port", type=int, default=11434, help="port to bind (0: any free port)"
    )
    parser.add_argument(
        "--models",
        default="llama3.2:3b,nomic-embed-text:latest",
        help="comma-separated model names; capabilities follow the name "
        "(*embed* embeds, llava/*vision* sees, qwen3/deepseek-r1 think)",
    )
    parser.add_argument(
        "--tps", type=_positive, default=50.0, help="tokens per second (0: no delay)"
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="fixed reply length in tokens (default 8-40, derived from the prompt)",
    )
    parser.add_argument(
        "--fault", choices=FAULTS, default="ok", help="initial fault mode"
    )
    parser.add_argument(
        "--store",
        metavar="DIR",
        help="model store directory (Ollama's layout): enables /api/pull, "
        "/api/copy and /api/delete; its models are listed and served",
    )
    parser.add_argument(
        "--disk-free-mb",
        type=_positive,
        default=None,
        help="simulated disk size of the store in MB (a pull beyond it fails "
        "with 'no space left on device')",
    )
    parser.add_argument(
        "--part-mb",
        type=_positive,
        default=None,
        help="pull in Range parts of this many MB (default: Ollama's total/16, "
        "100..1000 MB)",
    )
    parser.add_argument(
        "--pull-mb-per-s",
        type=_positive,
        default=None,
        metavar="MB",
        help="limit pulls to this many MB/s (a slow network; default no limit)",
    )
    parser.add_argument(
        "--tags-without-capabilities",
        action="store_true",
        help="leave `capabilities` out of /api/tags, as older Ollama releases "
        "do (/api/show still lists them)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="varies every answer (same seed, same output)",
    )
