"""CLI subcommands of herd.router: `herd serve` and `herd status`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from herd import hosts
from herd.errors import ConfigError, StateError
from herd.router import launch
from herd.settings import (
    BIND,
    BLOB_SENDER,
    GUNICORN_CONF,
    ROUTER_TOKEN,
    STATE_DIR,
    WORKERS,
    Setting,
)


def gunicorn_conf(configured: str | None = None, what: str = "--config") -> Path:
    """etc/gunicorn.conf.py: --config / $HERD_GUNICORN_CONF (which must exist), else
    the source tree's, an install's or /etc/herd's."""
    if configured:
        return launch.check_config(configured, what)
    candidates = [
        Path(__file__).resolve().parents[2] / "etc" / "gunicorn.conf.py",
        Path(sys.prefix) / "share" / "herd" / "etc" / "gunicorn.conf.py",
        Path("/etc/herd/gunicorn.conf.py"),
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        "gunicorn.conf.py not found (looked in "
        + ", ".join(str(p) for p in candidates)
        + f"); pass {GUNICORN_CONF.flag} or set {GUNICORN_CONF.env}"
    )


def _named(setting: Setting, cli_value: object) -> str:
    """How the user gave a setting, for error messages: the flag or the env var."""
    return setting.flag if cli_value is not None else setting.env


def _served_fleet(state_dir: str):
    from herd.manifest import load_bytes
    from herd.store import read_pointer

    pointer = read_pointer(state_dir)
    if pointer is None:
        raise StateError(
            f"no applied manifest in {state_dir} (run `herd apply FILE` first, "
            "or pass --state-dir)"
        )
    fleet = load_bytes(
        pointer.manifest.encode(), f"revision {pointer.revision}", pointer.base_dir
    )
    return fleet, pointer.revision


def _repair_pointer(state_dir: str) -> None:
    """Serve the head revision even if an apply crashed before swapping the
    pointer, or the pointer file was damaged (truncated, emptied, removed)."""
    from herd.store import DB_NAME, Store

    if (Path(state_dir) / DB_NAME).exists():
        store = Store(state_dir, create=False)
        try:
            repaired = store.sync_pointer()
        finally:
            store.close()
        if repaired:
            print(f"herd serve: {repaired}", flush=True)


def serve(args: argparse.Namespace) -> int:
    """Run gunicorn (gevent worker) on router.listen or --bind until it stops.

    Arguments are checked and the socket bound before gunicorn starts; the
    banner is printed once a worker answers; signals are passed on to gunicorn.
    """
    state_dir = str(STATE_DIR.resolve(args.state_dir))
    workers = launch.check_workers(
        WORKERS.resolve(args.workers), _named(WORKERS, args.workers)
    )
    conf = gunicorn_conf(
        GUNICORN_CONF.resolve(args.config), _named(GUNICORN_CONF, args.config)
    )
    _repair_pointer(state_dir)
    fleet, _ = _served_fleet(state_dir)
    BLOB_SENDER.resolve()  # a bad value: one line here, not a failed worker
    configured = BIND.resolve(args.bind)
    what = _named(BIND, args.bind) if configured else "router.listen"
    bind = launch.parse_bind(configured or fleet.router.listen, what)
    sock = launch.listen(bind)
    # The workers get the address as given: a name in it is one the router
    # answers to (herd.router.hostnames); the socket is bound already.
    env = {**os.environ, STATE_DIR.env: state_dir, BIND.env: configured or bind.netloc}
    env[WORKERS.env] = str(workers)  # the app shares state when there are several
    try:
        proc = launch.start(conf, sock, workers, env)
    finally:
        sock.close()  # gunicorn holds it now
    restore = launch.forward_signals(proc)
    try:
        if not launch.wait_ready(proc, bind.url):
            print(
                f"herd serve: the router exited before serving (status "
                f"{proc.returncode}; gunicorn's messages are above)",
                file=sys.stderr,
            )
            return 1
        print(
            f"herd serve: router on http://{bind.netloc} (state {state_dir}); "
            "Ctrl-C stops it",
            flush=True,
        )
        code = proc.wait()
    finally:
        restore()
    return 128 - code if code < 0 else code


def status(args: argparse.Namespace) -> int:
    """Ask the running router for /fleet/status; else show the manifest's view."""
    from herd.cli import print_json
    from herd.router import report

    fleet, revision = _served_fleet(str(STATE_DIR.resolve(args.state_dir)))
    url = _addressed(args.router or report.local_url(fleet.router.listen))
    live = report.fetch_live(url, ROUTER_TOKEN.resolve(args.token))
    if live is not None:
        live["source"] = f"live router {url}"
    result = live or report.manifest_view(fleet, revision)
    result["health"] = _health(str(STATE_DIR.resolve(args.state_dir)), url, live, args)
    peers, digest = _ha_peers(args, fleet, live)
    if peers is not None:
        result["ha_peers"] = [p.as_dict(digest) for p in peers]
    if args.json:
        print_json(result)
    else:
        from herd.ops.output import shown

        # (What agents and mDNS announcements report reaches the terminal.)
        safe = shown(result)
        print(report.render(safe))
        if peers:
            from herd.router.hapeers import lines

            print("\n" + "\n".join(shown(lines(peers, digest))))
        if safe["health"] is not None:
            from herd.health.commands import render

            print("\n" + render(safe["health"]))
    return 0


def _ha_peers(args: argparse.Namespace, fleet, live: dict | None):  # noqa: ANN001, ANN202
    """The other routers of router.ha and this router's revision digest."""
    from herd.router import hapeers, report
    from herd.store import read_pointer, sha256_hex

    if fleet.router.ha is None:
        return None, None
    digest = (live or {}).get("sha256")
    if digest is None:
        pointer = read_pointer(str(STATE_DIR.resolve(args.state_dir)))
        digest = sha256_hex(pointer.manifest.encode()) if pointer else None
    token = ROUTER_TOKEN.resolve(args.token)
    return hapeers.peer_states(fleet, token, report.fetch_live), digest


def _health(state_dir: str, url: str, live: dict | None, args: argparse.Namespace):
    """The health findings for `herd status`: the router's when it answers
    (operator groups only; None otherwise), else the state directory's."""
    from herd.health import commands as health

    if live is None:
        return health.offline(state_dir)
    if not live.get("operator"):
        return None
    try:
        return health.fetch(url, ROUTER_TOKEN.resolve(args.token))
    except ConfigError:
        return None


def _addressed(url: str) -> str:
    """`url` with its host replaced by its address (IP, or from /etc/hosts): never
    handed to the system resolver, which may ask DNS."""
    parts = urlsplit(url)
    address = hosts.lookup(parts.hostname or "")
    if address is None:
        raise ConfigError(f"--router {url}: {hosts.unresolvable(parts.hostname or '')}")
    netloc = f"[{address}]" if ":" in address else address
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands to the `herd` parser."""
    from herd.cli import add_command

    parser = add_command(
        sub,
        "serve",
        serve,
        help="run the router (gunicorn, gevent worker) on the manifest's router.listen",
        examples="""\
  herd serve                          serve the applied manifest on router.listen
  herd serve --bind 127.0.0.1:11435   override the address
  herd serve --workers 2              one gevent worker per CPU core to use""",
        parents=[common],
    )
    for setting in (BIND, WORKERS, GUNICORN_CONF):
        setting.add_to(parser)
    parser = add_command(
        sub,
        "status",
        status,
        help="show the fleet: nodes, health, models, drift from the manifest",
        examples="""\
  herd status                          ask the local router, else show the manifest
  herd status --json                   machine-readable
  herd status --router http://10.0.0.5:11435""",
        parents=[common],
        json_flag=True,
    )
    parser.add_argument(
        "--router", help="router URL (default: router.listen of the manifest)"
    )
    ROUTER_TOKEN.add_to(parser)
