"""The router's WSGI app: `create_app(...)` builds it from collaborators.

gunicorn loads `herd.router.app:get_app()`, which only reads configuration
(the state directory, from HERD_STATE_DIR) and builds the real collaborators.
Importing this module has no side effects: no sockets, threads, greenlets or
database connections, and no gevent import (tests/router/test_router_app.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon

from herd.dashboard.api import Dashboard
from herd.dashboard.page import add_routes as add_dashboard
from herd.discovery.agents import AgentAwareHealth
from herd.discovery.announcer import RouterMdns, bind_port
from herd.discovery.membership import Membership
from herd.discovery.source import DiscoveredSource
from herd.health.gather import Monitor
from herd.health.route import PATH as HEALTH_PATH
from herd.health.route import Health
from herd.health.scrub import Scrub
from herd.router.api import (
    failures,
    fleet,
    images,
    ollama,
    openai,
    ops,
    registry,
    transcribe,
)
from herd.router.api.heartbeat import PATH as HEARTBEAT_PATH
from herd.router.api.heartbeat import HeartbeatResource
from herd.router.gate import Gate
from herd.router.observe.accesslog import AccessLog
from herd.router.observe.traces import TraceLog
from herd.router.routing.proxy import Upstream
from herd.router.runtime import Runtime


class RouterApp(falcon.App):
    """falcon.App plus the `Runtime` behind it (for tests and gunicorn hooks).

    Signed heartbeats (POST /fleet/heartbeat) go straight to their endpoint,
    a plain WSGI callable: they come by the hundred each second, answer no
    client group, and need none of falcon's request objects or middleware.
    """

    __slots__ = ("herd_runtime", "herd_heartbeat")

    def __call__(self, env: dict[str, Any], start_response: Any) -> Any:
        if env.get("PATH_INFO") == HEARTBEAT_PATH and env["REQUEST_METHOD"] == "POST":
            return self.herd_heartbeat(env, start_response)
        return _falcon_call(self, env, start_response)


#: falcon's own dispatch (a plain call: `super()` builds an object per request).
_falcon_call = falcon.App.__call__


#: The runtime of the app `get_app()` built in this process (for gunicorn hooks).
_RUNTIME: Runtime | None = None


def create_app(
    source: Any,
    traces: TraceLog,
    upstream: Upstream,
    clock: Callable[[], float] = time.time,
    *,
    poller: Any = None,
    background: bool = True,
    bundle_store: Callable[[], Path] | None = None,
    access: AccessLog | None = None,
    membership: Membership | None = None,
    bind: Callable[[], str | None] = lambda: None,
    mdns_lock: Path | None = None,
    state_dir: Path | None = None,
    scrub: tuple[float, int] | None = None,
) -> RouterApp:
    """The router as a falcon WSGI app over the given collaborators.

    `source` supplies the served manifest (`current()`, `check()`,
    `listeners`: see herd.router.reload); `traces` records one row per
    request; `upstream` talks to nodes; `bundle_store` (the bundle store
    directory, followed across reloads) mounts the read-only /v2 registry
    nodes pull models from; `access` writes one line per request. The
    `Runtime` is `app.herd_runtime`. `membership` holds the nodes that joined
    by signed heartbeat (in memory unless given); they are merged into the
    served fleet. `bind` (the listen address given to gunicorn, if any) is
    the port mDNS announces; `mdns_lock` lets one worker of several speak.
    `state_dir` is where the health engine reads the pointer, traces.db and
    the scrub's results; `scrub` (seconds between ticks, bytes per tick)
    starts the bundle store scrub (herd.health.scrub) in the background.
    """
    membership = membership or Membership()
    source = DiscoveredSource(source, membership)
    if poller is None:
        poller = AgentAwareHealth(
            lambda: source.current().fleet,
            upstream,
            clock,
            membership=membership,
            static_fleet=lambda: source.static().fleet,
        )
    runtime = Runtime(
        source,
        traces,
        upstream,
        clock,
        poller=poller,
        background=background,
        access=access,
    )
    gate = Gate(runtime)
    app = RouterApp(middleware=[gate], media_type=falcon.MEDIA_JSON)
    app.req_options.strip_url_path_trailing_slash = True
    failures.install(app)

    app.add_route("/", ollama.Root())
    for path in ("/api/chat", "/api/generate"):
        app.add_route(path, ollama.Forwarded(runtime, path, streams=True))
    for path in ("/api/embed", "/api/embeddings", "/api/show"):
        app.add_route(path, ollama.Forwarded(runtime, path, streams=False))
    app.add_route("/api/tags", ollama.Tags(runtime))
    app.add_route("/api/ps", ollama.Ps(runtime))
    app.add_route("/api/version", ollama.Version(runtime))
    managed = ollama.Managed()
    for path in ollama.MANAGED_PATHS:
        app.add_route(path, managed)

    for path, resource in openai.resources(runtime).items():
        app.add_route(path, resource)
    for path in ("/api/generate-image", "/v1/images/generations"):
        app.add_route(path, images.Generate(runtime, path))
    for path in transcribe.ROUTES:
        app.add_route(path, transcribe.Transcribe(runtime, path))

    app.add_route("/fleet/status", fleet.Status(runtime))
    app.add_route("/fleet/nodes", fleet.Nodes(runtime))
    heartbeat = HeartbeatResource(runtime, membership)
    app.add_route(HEARTBEAT_PATH, heartbeat)
    app.herd_heartbeat = heartbeat
    announcer = RouterMdns(
        lambda: source.static().fleet,
        membership,
        port=lambda: bind_port(bind() or source.static().fleet.router.listen),
        fingerprints=heartbeat.fingerprints,
        lock_path=mdns_lock,
    )
    runtime.services.append(announcer.run)
    runtime.services.append(source.keep_checking)
    runtime.on_stop.append(announcer.stop)
    app.add_route("/healthz", ops.Healthz())
    app.add_route("/readyz", ops.Readyz(runtime))
    app.add_route("/metrics", ops.Metrics(runtime))
    if bundle_store is not None:
        registry.add_routes(app, bundle_store)
    monitor = Monitor(runtime, state_dir, bundle_store)
    runtime.services.append(monitor.run)
    app.add_route(HEALTH_PATH, Health(monitor))
    add_dashboard(app, Dashboard(runtime, state_dir))
    if scrub is not None and bundle_store is not None and state_dir is not None:
        _start_scrub(runtime, bundle_store, state_dir, *scrub)
    gate.find_route = app._router.find
    app.herd_runtime = runtime
    return app


def _start_scrub(
    runtime: Runtime,
    store: Callable[[], Path],
    state_dir: Path,
    interval_s: float,
    budget: int,
) -> None:
    scrubber = Scrub(store, state_dir, budget=budget)
    runtime.services.append(lambda stopped: scrubber.run(stopped, interval_s))


def get_app() -> RouterApp:
    """The app gunicorn serves: the manifest of HERD_STATE_DIR's current revision."""
    from herd.router.reload import PointerSource
    from herd.settings import (
        ACCESS_LOG,
        BIND,
        SCRUB_BYTES,
        SCRUB_INTERVAL,
        STATE_DIR,
        WORKERS,
    )

    global _RUNTIME
    state_dir = STATE_DIR.resolve()
    source = PointerSource(state_dir)
    traces = TraceLog(
        state_dir, retention_days=lambda: source.current().fleet.audit.retention_days
    )
    access = AccessLog() if ACCESS_LOG.resolve() else None
    app = create_app(
        source,
        traces,
        Upstream(swept=True),
        bundle_store=lambda: bundle_store(source, state_dir),
        access=access,
        membership=Membership(
            Path(state_dir) / "discovery.db", shared=WORKERS.resolve() > 1
        ),
        bind=BIND.resolve,
        mdns_lock=Path(state_dir) / "mdns.lock",
        state_dir=Path(state_dir),
        scrub=(SCRUB_INTERVAL.resolve(), SCRUB_BYTES.resolve()),
    )
    _RUNTIME = app.herd_runtime
    return app


def bundle_store(source: Any, state_dir: str) -> Path:
    """`bundles.store` of the served revision (relative to its manifest), else
    STATE_DIR/store: the same rule as `herd bundle import` (herd.bundle.policy)."""
    served = source.current()
    configured = served.fleet.bundles.store
    if not configured:
        return Path(state_dir) / "store"
    path = Path(configured).expanduser()
    if path.is_absolute():
        return path
    return Path(served.base_dir or state_dir) / path


def runtime() -> Runtime | None:
    """The runtime `get_app()` built in this worker, if any."""
    return _RUNTIME
