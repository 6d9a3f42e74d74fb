"""gunicorn settings for the herd router (`herd serve` uses this file by default).

One gevent worker serves thousands of concurrent streams; add workers (`herd
serve --workers N`) only to use more CPU cores: the manifest's limits hold for
the router as a whole whatever N is (herd/router/fleetstate.py). Never
`preload_app` with gevent: the app must be imported after the worker
monkey-patches. The bind
address comes from the manifest's `router.listen` (passed by `herd serve`) or
HERD_BIND. gunicorn's access log stays off (herd logs one line per request,
never bodies); HERD_ACCESS_LOG=0 silences herd's own access lines too.
"""

from herd.settings import (
    BIND,
    BLOB_SENDER,
    BODY_TIMEOUT,
    CLIENT_CONNECTIONS,
    GC_TUNE,
    HEADER_TIMEOUT,
    KEEPALIVE,
    LOG_LEVEL,
    WORKER_CONNECTIONS,
    WORKERS,
)

wsgi_app = "herd.router.app:get_app()"
# gevent's pywsgi server under gunicorn (about a third less CPU per request
# than the plain "gevent" worker), with a lean request-header parser: see
# herd/router/http/worker.py. "gevent_pywsgi" or "gevent" work too.
worker_class = "herd.router.http.worker.RouterWorker"
workers = WORKERS.resolve()
worker_connections = WORKER_CONNECTIONS.resolve()
bind = [BIND.resolve() or "0.0.0.0:11435"]
preload_app = False
backlog = 2048
# Idle keep-alive connections are held this long (the worker applies it, and
# closes idle ones at once when stopping; 0 turns keep-alive off).
keepalive = KEEPALIVE.resolve()
# The worker's front door reads these itself (herd/router/http/worker.py); resolving
# them here too stops `herd serve` on a bad value before any worker starts.
HEADER_TIMEOUT.resolve()
BODY_TIMEOUT.resolve()
CLIENT_CONNECTIONS.resolve()
BLOB_SENDER.resolve()
timeout = 60
graceful_timeout = 30
accesslog = None
errorlog = "-"
loglevel = LOG_LEVEL.resolve()
proc_name = "herd-router"
# gunicorn 24+ opens a control socket in $HOME by default; the router needs none.
control_socket_disable = True


def post_fork(server, worker):
    """herd's log lines go to stderr like gunicorn's. (The one line per request
    is written by herd.router.observe.accesslog, in batches; HERD_ACCESS_LOG=0
    drops it.)"""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
        )
    )
    herd_log = logging.getLogger("herd")
    herd_log.addHandler(handler)
    herd_log.setLevel(loglevel.upper())
    herd_log.propagate = False


def post_worker_init(worker):
    """Start the background greenlets (poller, traces, reload) in the worker."""
    import gc

    from herd.router.app import runtime

    rt = runtime()
    if rt is not None:
        rt.ensure_started()
    from herd.router.observe import stallprobe

    stallprobe.start_from_env()  # benchmarks only: HERD_STALL_PROBE=FILE
    if GC_TUNE.resolve():
        # Everything loaded so far lives as long as the worker: keep it out
        # of the collector, and collect young objects less often. Fewer and
        # shorter GC pauses, which otherwise show up as tail latency.
        gc.freeze()
        gc.set_threshold(20_000, 20, 50)


def worker_exit(server, worker):
    """Write the last buffered traces before the worker goes away."""
    from herd.router.app import runtime

    rt = runtime()
    if rt is not None:
        rt.stop()


# -- Prometheus multiprocess directory (herd.router.observe.multiproc) ---------------
# Every worker writes its counts there; /metrics adds them up.


def on_starting(server):
    """Before any worker exists: a private, empty metrics directory, and the
    fleet state every worker shares (slots, queues, rate limits, counters,
    health: herd/router/fleetstate.py)."""
    from herd.router import fleetfile
    from herd.router.observe import multiproc

    multiproc.prepare()
    fleetfile.prepare(server.num_workers)


def child_exit(server, worker):
    """A worker is gone: its live gauges stop counting (its counters stay),
    and the slots and queue places it held are free again."""
    from herd.router import fleetfile
    from herd.router.observe import multiproc

    multiproc.worker_gone(worker.pid)
    fleetfile.worker_gone(worker.pid)


def on_exit(server):
    """The router stops: remove the metrics directory and fleet state it made."""
    from herd.router import fleetfile
    from herd.router.observe import multiproc

    multiproc.cleanup()
    fleetfile.cleanup()


# -- systemd (Type=notify): readiness, reload, stop; see herd/router/readiness.py --
# gunicorn must not see NOTIFY_SOCKET: it would send READY=1 before any worker.
from herd.router.readiness import take_notify_socket as _take_notify_socket  # noqa: E402

_NOTIFY_SOCKET = _take_notify_socket()


def when_ready(server):
    """In the master: READY=1 once a worker answers /readyz; HUP re-reads the
    applied revision without restarting workers; STOPPING=1 on stop."""
    from herd.router.readiness import Supervisor
    from herd.settings import STATE_DIR

    Supervisor(server, _NOTIFY_SOCKET, state_dir=str(STATE_DIR.resolve())).install()
