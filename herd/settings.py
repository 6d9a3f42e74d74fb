"""Every process-level setting, declared once: name, type, default, env var, help.

CLI flags and the settings table in README.md are derived from `SETTINGS`
(tests/test_settings.py fails when the README drifts). The fleet's own
configuration lives in the manifest, not here: these are only the knobs a
process needs before it can find the manifest.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The state directory `systemd/herd-router.service` serves.
SYSTEM_STATE_DIR = "/var/lib/herd"


def default_state_dir() -> str:
    """/var/lib/herd as root, else $XDG_STATE_HOME/herd (the CLI contract)."""
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "herd")


def is_system_state_dir(state_dir: str | os.PathLike[str] | None) -> bool:
    """Whether `state_dir` is the one the system's router unit serves (None: the
    caller names no state directory, so yes). Files outside the state directory
    that belong to that router (its unit's drop-in, keepalived.conf) are written
    by default only for it: an apply into a scratch or demo state directory run
    as root must not rewrite the production router's allowlist."""
    if state_dir is None:
        return True
    return Path(state_dir).resolve() == Path(SYSTEM_STATE_DIR).resolve()


def parse_bool(text: str) -> bool:
    """Environment booleans: 1/true/yes/on or 0/false/no/off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1 or 0, got {text!r}")


@dataclass(frozen=True)
class Setting:
    name: str
    #: CLI flag, or None for environment-only settings (read by gunicorn's config).
    flag: str | None
    env: str
    help: str
    default: Callable[[], Any]
    type: Callable[[str], Any] = str
    metavar: str | None = None

    def resolve(self, cli_value: Any = None) -> Any:
        """CLI flag beats environment beats default; a bad env value is an error."""
        if cli_value is not None:
            return cli_value
        raw = os.environ.get(self.env)
        if raw:
            try:
                return self.type(raw)
            except ValueError as ex:
                from herd.errors import ConfigError

                raise ConfigError(f"{self.env}={raw!r}: {ex}") from None
        return self.default()

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.flag is None:
            raise ValueError(f"{self.name} is environment-only")
        # The README names the command a setting belongs to; --help needn't.
        text = self.help.split(": ", 1)[-1] if self.help.startswith("`") else self.help
        parser.add_argument(
            self.flag,
            dest=self.name,
            type=self.type,
            default=None,
            metavar=self.metavar or self.name.upper(),
            help=f"{text} (env {self.env})",
        )


def _none() -> None:
    return None


def positive_seconds(text: str) -> float:
    """A number of seconds above zero."""
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected seconds above 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number above zero."""
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a whole number above 0, got {text!r}")
    return value


STATE_DIR = Setting(
    name="state_dir",
    flag="--state-dir",
    env="HERD_STATE_DIR",
    help="where herd keeps its state: revisions, audit log, traces, bundle store "
    "(default /var/lib/herd as root, else $XDG_STATE_HOME/herd)",
    default=default_state_dir,
    metavar="DIR",
)
BIND = Setting(
    name="bind",
    flag="--bind",
    env="HERD_BIND",
    help="`herd serve`: HOST:PORT to listen on (default: the manifest's router.listen)",
    default=_none,
    metavar="HOST:PORT",
)
WORKERS = Setting(
    name="workers",
    flag="--workers",
    env="HERD_WORKERS",
    help="`herd serve`: gunicorn gevent workers; one holds thousands of streams, add "
    "more only to use more CPU cores: the manifest's limits, the counters and the "
    "node polls are the router's whatever the number (default 1, at most 128)",
    default=lambda: 1,
    type=int,
    metavar="N",
)
GUNICORN_CONF = Setting(
    name="config",
    flag="--config",
    env="HERD_GUNICORN_CONF",
    help="`herd serve`: gunicorn config file (default etc/gunicorn.conf.py from the "
    "source tree or the install)",
    default=_none,
    metavar="FILE",
)
ROUTER_TOKEN = Setting(
    name="token",
    flag="--token",
    env="HERD_TOKEN",
    help="`herd status`/`herd health`: bearer token for the router, if its client "
    "group needs one",
    default=_none,
    metavar="TOKEN",
)
ACCESS_LOG = Setting(
    name="access_log",
    flag=None,
    env="HERD_ACCESS_LOG",
    help="router: one log line per request on stderr (never bodies); 0 turns it off "
    "(default 1)",
    default=lambda: True,
    type=parse_bool,
)
LOG_LEVEL = Setting(
    name="log_level",
    flag=None,
    env="HERD_LOG_LEVEL",
    help="router: log level of herd and gunicorn (default info)",
    default=lambda: "info",
)
KEEPALIVE = Setting(
    name="keepalive",
    flag=None,
    env="HERD_KEEPALIVE",
    help="router: seconds an idle client keep-alive connection is held; a stopping "
    "router closes idle ones at once; 0 turns keep-alive off (default 10)",
    default=lambda: 10,
    type=int,
)
WORKER_CONNECTIONS = Setting(
    name="worker_connections",
    flag=None,
    env="HERD_WORKER_CONNECTIONS",
    help="router: most simultaneous client connections per worker (default 10000)",
    default=lambda: 10000,
    type=int,
)
HEADER_TIMEOUT = Setting(
    name="header_timeout",
    flag=None,
    env="HERD_HEADER_TIMEOUT",
    help="router: seconds a client has to send a whole request head (request line "
    "and headers), counted from the connection or the request's first byte; "
    "then it gets 408 and is closed (default 10)",
    default=lambda: 10.0,
    type=positive_seconds,
)
BODY_TIMEOUT = Setting(
    name="body_timeout",
    flag=None,
    env="HERD_BODY_TIMEOUT",
    help="router: seconds a client has to send a whole request body once its head "
    "is in; then it gets 408 and is closed (default 60)",
    default=lambda: 60.0,
    type=positive_seconds,
)
CLIENT_CONNECTIONS = Setting(
    name="client_connections",
    flag=None,
    env="HERD_CLIENT_CONNECTIONS",
    help="router: most simultaneous connections one client address may hold per "
    "worker; more get 503 and are closed (default: a quarter of "
    "HERD_WORKER_CONNECTIONS)",
    default=_none,
    type=positive_int,
)
GC_TUNE = Setting(
    name="gc_tune",
    flag=None,
    env="HERD_GC_TUNE",
    help="router: freeze start-up objects out of the garbage collector and collect "
    "less often, for steadier latency; 0 turns it off (default 1)",
    default=lambda: True,
    type=parse_bool,
)
STALL_PROBE = Setting(
    name="stall_probe",
    flag=None,
    env="HERD_STALL_PROBE",
    help="router, benchmarks: count the event loop's stalls and GC pauses in each "
    "worker and write them to FILE.PID every 0.5 s (herd.router.observe.stallprobe; "
    "costs ~1% of a core; default off)",
    default=_none,
    metavar="FILE",
)
BLOB_SENDER_MODES = ("idle", "nice", "off")


def blob_sender_mode(text: str) -> str:
    """One of BLOB_SENDER_MODES."""
    value = text.strip().lower()
    if value not in BLOB_SENDER_MODES:
        raise ValueError(f"expected one of {', '.join(BLOB_SENDER_MODES)}")
    return value


BLOB_SENDER = Setting(
    name="blob_sender",
    flag=None,
    env="HERD_BLOB_SENDER",
    help="router: who sends registry blob bodies over 1 MiB: a helper process at "
    "the lowest CPU priority, `idle` (SCHED_IDLE: only CPU nothing else wants) or "
    "`nice` (nice 19), so pulls never delay other requests; `off`: the worker "
    "itself (default idle)",
    default=lambda: "idle",
    type=blob_sender_mode,
)
REGISTRY = Setting(
    name="registry",
    flag="--registry",
    env="HERD_REGISTRY",
    help="`herd apply`: HOST:PORT of the router's registry as the nodes reach it "
    "(default: router.listen, unless that is a wildcard address)",
    default=_none,
    metavar="HOST:PORT",
)
APPLY_NODES = Setting(
    name="apply_nodes",
    flag=None,
    env="HERD_APPLY_NODES",
    help="`herd plan`/`herd apply`: survey and change the nodes; 0 diffs and "
    "records revisions only, contacting no node (default 1)",
    default=lambda: True,
    type=parse_bool,
)
SCRUB_INTERVAL = Setting(
    name="scrub_interval",
    flag=None,
    env="HERD_SCRUB_INTERVAL",
    help="router: seconds between two ticks of the bundle store scrub, which "
    "re-hashes blobs in the background (default 60)",
    default=lambda: 60.0,
    type=positive_seconds,
)
SCRUB_BYTES = Setting(
    name="scrub_bytes",
    flag=None,
    env="HERD_SCRUB_BYTES",
    help="router: bytes of blobs the scrub reads per tick at most (default "
    "134217728, 128 MiB: about 180 GB a day)",
    default=lambda: 128 * 1024 * 1024,
    type=positive_int,
)
FIREWALL_DROPIN = Setting(
    name="systemd_dropin_dir",
    flag=None,
    env="HERD_SYSTEMD_DROPIN_DIR",
    help="`herd apply`: directory for the router unit's address allowlist drop-in; "
    "off skips it (default /etc/systemd/system/herd-router.service.d as root on a "
    "systemd host applying to /var/lib/herd, else skipped)",
    default=_none,
    metavar="DIR",
)
KEEPALIVED_CONF = Setting(
    name="keepalived_conf",
    flag=None,
    env="HERD_KEEPALIVED_CONF",
    help="`herd apply` with router.ha: file for this router's keepalived "
    "configuration; off skips it (default /etc/keepalived/keepalived.conf as root "
    "applying to /var/lib/herd, else skipped)",
    default=_none,
    metavar="FILE",
)

#: Every command takes these.
COMMON: tuple[Setting, ...] = (STATE_DIR,)
SETTINGS: tuple[Setting, ...] = (
    STATE_DIR,
    BIND,
    WORKERS,
    GUNICORN_CONF,
    ROUTER_TOKEN,
    ACCESS_LOG,
    LOG_LEVEL,
    KEEPALIVE,
    WORKER_CONNECTIONS,
    HEADER_TIMEOUT,
    BODY_TIMEOUT,
    CLIENT_CONNECTIONS,
    GC_TUNE,
    STALL_PROBE,
    BLOB_SENDER,
    REGISTRY,
    APPLY_NODES,
    SCRUB_INTERVAL,
    SCRUB_BYTES,
    FIREWALL_DROPIN,
    KEEPALIVED_CONF,
)


def docs_table() -> str:
    """The settings table as Markdown, as it must appear in README.md."""
    rows = ["| flag | env | meaning |", "|---|---|---|"]
    rows += [
        f"| {f'`{s.flag}`' if s.flag else '—'} | `{s.env}` | {s.help} |"
        for s in SETTINGS
    ]
    return "\n".join(rows)
