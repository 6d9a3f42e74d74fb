"""Starting the router's gunicorn and knowing when it serves (herd serve, herd demo).

Everything that can be checked before gunicorn starts is checked here, so a
mistake is one line and exit 1 instead of gunicorn's retries or a server that
listens and never answers: the bind address (HOST:PORT, an IP or a name in
/etc/hosts, never a DNS lookup), the worker count, the config file. The
listening socket is bound here too, and handed to gunicorn as `fd://N`: a port
in use is reported at once, and there is no window in which another process
could take it. The router counts as started only once a worker answers
`/healthz` over that socket; until then nothing says "router on ...".
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from herd import hosts
from herd.digits import decimal
from herd.errors import ConfigError
from herd.router.fleetstate import ROWS

#: Signals `herd serve` passes on to gunicorn (its master acts on each).
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)
PROBE_TIMEOUT_S = 1.0
#: Probes go straight to the router: never through an http_proxy from the env.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Bind:
    """Where the router listens: an IP address (never a name) and a port."""

    host: str
    port: int

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """A URL this host can reach the router at (wildcards become loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{Bind(host, self.port).netloc}"


def parse_bind(text: str, what: str = "--bind") -> Bind:
    """HOST:PORT or [V6]:PORT; a host name must be in /etc/hosts."""
    example = "e.g. 127.0.0.1:11435, 0.0.0.0:11435 or [::1]:11435"
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or text.startswith(("unix:", "fd://")):
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT ({example})")
    if host.startswith("[") != host.endswith("]"):
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT ({example})")
    if ":" in host and not host.startswith("["):
        raise ConfigError(f"{what} {text!r}: put an IPv6 address in [] ({example})")
    port = decimal(port_text, 5)
    if port is None or not 1 <= port <= 65535:
        raise ConfigError(f"{what} {text!r}: port must be a number from 1 to 65535")
    address = hosts.lookup(host.strip("[]"))
    if address is None:
        raise ConfigError(f"{what} {text!r}: {hosts.unresolvable(host)}")
    return Bind(address, port)


def check_workers(workers: int, what: str = "--workers") -> int:
    if workers < 1:
        raise ConfigError(f"{what} must be 1 or more (got {workers})")
    if workers > ROWS:
        raise ConfigError(
            f"{what} must be at most {ROWS} (got {workers}): the workers share "
            "one fleet state with that many rows"
        )
    return workers


def check_config(path: str, what: str) -> Path:
    """A config file named explicitly must exist; never fall back silently."""
    found = Path(path)
    if not found.is_file():
        why = "is not a file" if found.exists() else "no such file"
        raise ConfigError(f"{what} {path}: {why}")
    return found


def listen(bind: Bind) -> socket.socket:
    """Bind the router's socket now (as gunicorn would: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind.host, bind.port))
    except OSError as ex:
        sock.close()
        raise ConfigError(
            f"cannot listen on {bind.netloc}: {(ex.strerror or str(ex)).lower()}"
        ) from None
    sock.set_inheritable(True)
    return sock


def gunicorn_argv(conf: Path, sock: socket.socket, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(conf),
        "--bind",
        f"fd://{sock.fileno()}",
        "--workers",
        str(workers),
    ]


def answers(url: str) -> bool:
    """True once any HTTP reply comes back from `url`/healthz."""
    try:
        with _DIRECT.open(url + "/healthz", timeout=PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def die_with_parent() -> None:
    """In a child, before exec: get SIGTERM if the parent dies (Linux), so a
    killed `herd serve` or `herd demo` never leaves an orphan gunicorn serving."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(
    conf: Path,
    sock: socket.socket,
    workers: int,
    env: Mapping[str, str],
    preexec_fn: Callable[[], None] | None = die_with_parent,
) -> subprocess.Popen:
    """gunicorn as a child, holding the already bound socket; it stops when
    its parent dies (`preexec_fn`)."""
    return subprocess.Popen(
        gunicorn_argv(conf, sock, workers),
        env=dict(env),
        pass_fds=(sock.fileno(),),
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec_fn,
    )


def wait_ready(proc: subprocess.Popen, url: str) -> bool:
    """Poll until a worker answers (True) or gunicorn exits (False)."""
    while proc.poll() is None:
        if answers(url):
            return True
        time.sleep(0.1)
    return False


def forward_signals(proc: subprocess.Popen) -> Callable[[], None]:
    """Pass FORWARDED signals to `proc`; returns a function restoring the old
    handlers. (A terminal's Ctrl-C reaches both processes: gunicorn takes a
    second SIGINT as the same quick shutdown.)"""

    def handler(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {sig: signal.signal(sig, handler) for sig in FORWARDED}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore
