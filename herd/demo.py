"""`herd demo`: the newcomer's one command, and one Ctrl-C to stop all of it.

The demo manifest (etc/demo.yaml, installed with herd) is applied into a
temporary state directory; every node it declares gets a `herd sim` on a free
loopback port (never Ollama's own 11434, so a real Ollama on this host is left
alone), the node URLs of the applied copy point at them, and the router runs
on router.listen (or --port). When it serves, the demo prints what to try.
SIGINT or SIGTERM (Ctrl-C reaches the whole process group; a signal to
`herd demo` alone works too) stops the router and the nodes and removes the
temporary state. Children also die with the demo if it is killed outright.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from herd.errors import ConfigError, HerdError
from herd.router import launch

DEMO_NAME = "demo.yaml"
#: Bounds on start-up waits (a sim prints its address at once; a worker boots in
#: seconds; nodes are polled every second).
SIM_START_S = 30.0
NODES_UP_S = 15.0
STOP_S = 10.0
#: Probes go straight to the router, never through an http_proxy from the env.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def demo_manifest() -> Path:
    """etc/demo.yaml from the source tree, else from the install (share/herd/etc)."""
    candidates = [
        Path(__file__).resolve().parents[1] / "etc" / DEMO_NAME,
        Path(sys.prefix) / "share" / "herd" / "etc" / DEMO_NAME,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        "the demo manifest is not installed (looked in "
        + ", ".join(map(str, candidates))
        + ")"
    )


@dataclass
class Child:
    """One process the demo started."""

    name: str
    proc: subprocess.Popen
    url: str = ""


class Demo:
    """The demo's processes and state; `stop()` undoes everything `start()` did."""

    def __init__(self, state_dir: Path | None, port: int | None, tps: float):
        self.keep_state = state_dir is not None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="herd-demo-"))
        self.port = port
        self.tps = tps
        self.children: list[Child] = []
        self.stopping = False
        self.router_url = ""

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        from herd.manifest import load_bytes

        source = demo_manifest()
        doc = yaml.safe_load(source.read_bytes())
        fleet = load_bytes(source.read_bytes(), str(source), str(source.parent))
        # The router's port first: if it is taken, say so before starting anything.
        listen = launch.parse_bind(fleet.router.listen, "router.listen")
        bind = launch.Bind("127.0.0.1", listen.port if self.port is None else self.port)
        sock = launch.listen(bind)
        try:
            bind = launch.Bind(bind.host, sock.getsockname()[1])  # --port 0: real one
            doc.setdefault("router", {})["listen"] = bind.netloc
            nodes = zip(doc.get("nodes") or [], fleet.nodes, strict=True)
            for node_doc, node in nodes:
                models = [m.name for m in fleet.models if node in fleet.nodes_for(m)]
                node_doc["url"] = self._start_sim(node.name, models).url
            self._apply(doc, source)
        except BaseException:
            sock.close()
            raise
        env = {
            **os.environ,
            "HERD_STATE_DIR": str(self.state_dir),
            "HERD_BIND": bind.netloc,
            # A demo stops at once: idle client connections are not waited for.
            "HERD_KEEPALIVE": "2",
        }
        from herd.router.commands import gunicorn_conf

        try:
            proc = launch.start(
                gunicorn_conf(), sock, 1, env, preexec_fn=launch.die_with_parent
            )
        finally:
            sock.close()
        self.children.append(Child("router", proc, bind.url))
        self.router_url = bind.url
        while not launch.answers(bind.url):
            if proc.poll() is not None or self.stopping:
                raise HerdError("the router exited before serving (messages above)")
            time.sleep(0.1)
        self._wait_nodes_up()

    def _start_sim(self, name: str, models: list[str]) -> Child:
        argv = [sys.executable, "-m", "herd", "sim", "--host", "127.0.0.1"]
        argv += ["--port", "0", "--models", ",".join(models), "--tps", f"{self.tps:g}"]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            preexec_fn=launch.die_with_parent,
        )
        child = Child(f"node {name}", proc)
        self.children.append(child)
        line = self._first_line(proc)
        if " on http://" not in line:
            raise HerdError(f"herd sim for node {name} did not start")
        child.url = line.split(" on ", 1)[1].split()[0]
        return child

    def _first_line(self, proc: subprocess.Popen) -> str:
        """The child's first stdout line, waiting in short ticks so a signal
        to the demo is acted on."""
        deadline = time.monotonic() + SIM_START_S
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not self.stopping and time.monotonic() < deadline:
                if sel.select(timeout=0.2):
                    return proc.stdout.readline()
        return ""

    def _apply(self, doc: dict[str, Any], source: Path) -> None:
        """Record the demo manifest (node URLs pointing at the sims) as a revision."""
        from herd.manifest.revisions import propose_file, record
        from herd.store import Store

        self.state_dir.mkdir(parents=True, exist_ok=True)
        copy = self.state_dir / DEMO_NAME
        header = f"# {source}, with node URLs pointing at this demo's herd sim nodes\n"
        copy.write_text(header + yaml.safe_dump(doc, sort_keys=False))
        store = Store(self.state_dir)
        try:
            store.sync_pointer()
            record(store, propose_file(store, copy))
        finally:
            store.close()

    def _wait_nodes_up(self) -> None:
        """Until /readyz says a node is up (bounded), so the first try works."""
        deadline = time.monotonic() + NODES_UP_S
        while time.monotonic() < deadline and not self.stopping:
            try:
                with _DIRECT.open(self.router_url + "/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)

    # -- run and stop ----------------------------------------------------------

    def exited(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop(self) -> None:
        """Stop every child (router first), wait for them, remove the temp state."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                # SIGINT: gunicorn's quick shutdown; herd sim stops on either.
                child.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_S
        for child in self.children:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            if child.proc.stdout is not None:
                child.proc.stdout.close()
        if not self.keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def tips(demo: Demo) -> str:
    """What to try, with the demo's real addresses and model names."""
    from herd.store import read_pointer

    pointer = read_pointer(demo.state_dir)
    fleet_doc = yaml.safe_load(pointer.manifest) if pointer else {}
    models = fleet_doc.get("models") or [{}]
    chat = next((m for m in models if "embed" not in m.get("name", "")), models[0])
    name = chat.get("name", "llama3.2:3b")
    alias = (chat.get("aliases") or [name])[0]
    url = demo.router_url
    message = [{"role": "user", "content": "hi"}]
    body = json.dumps({"model": name, "messages": message, "stream": False})
    openai = (
        f'import openai; print(openai.OpenAI(base_url="{url}/v1", api_key="unused")'
        f'.chat.completions.create(model="{alias}", messages={json.dumps(message)})'
        ".choices[0].message.content)"
    )
    nodes = ", ".join(
        f"{c.name[5:]} {c.url}" for c in demo.children if c.name.startswith("node ")
    )
    state = "kept" if demo.keep_state else "removed when the demo stops"
    return "\n".join(
        [
            f"herd demo: router on {url}, simulated nodes: {nodes}",
            f"  state dir: {demo.state_dir} ({state})",
            "try, from another terminal:",
            f"  curl {url}/api/chat -d '{body}'",
            f"  python3 -c '{openai}'",
            f"  herd status --state-dir {demo.state_dir}",
            "Ctrl-C stops the router and the nodes"
            + ("." if demo.keep_state else " and removes the state dir."),
        ]
    )


def run(args: argparse.Namespace) -> int:
    """Start everything, print what to try, wait for Ctrl-C, stop everything."""
    demo = Demo(Path(args.state_dir) if args.state_dir else None, args.port, args.tps)

    def stop(signum: int, frame: object) -> None:
        demo.stopping = True  # the loop below acts on it

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            demo.start()
        except HerdError:
            if not demo.stopping:  # a Ctrl-C during start-up is no error
                raise
        if not demo.stopping:
            print(tips(demo), flush=True)
        while not demo.stopping:
            gone = demo.exited()
            if gone is not None:
                time.sleep(0.5)  # a Ctrl-C reaches the children too: was it one?
                if demo.stopping:
                    break
                raise HerdError(
                    f"{gone.name} exited (status {gone.proc.returncode}); stopping"
                )
            time.sleep(0.2)
    finally:
        demo.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print("herd demo: stopped", flush=True)
    return 0


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0-65535 (0: any free port)")
    return value


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `herd demo`."""
    from herd.cli import add_command

    parser = add_command(
        sub,
        "demo",
        run,
        help="run the demo fleet on this host: simulated node(s) and the router "
        "on the demo manifest, in a temporary state dir; Ctrl-C stops all of it",
        examples="""\
  herd demo                         router on 127.0.0.1:11435, nodes on free ports
  herd demo --port 0                the router on any free port too
  herd demo --state-dir demo-state  keep the state (for other commands to use)""",
    )
    parser.add_argument(
        "--state-dir",
        dest="state_dir",
        metavar="DIR",
        default=None,
        help="keep the demo's state in DIR (default: a temporary directory, removed "
        "on exit; $HERD_STATE_DIR is not used)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=None,
        help="router port on 127.0.0.1 (default: the demo manifest's, 11435; "
        "0: any free port)",
    )
    parser.add_argument(
        "--tps", type=float, default=30.0, help="simulated tokens per second"
    )
