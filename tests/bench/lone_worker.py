"""One gunicorn worker in this very process, without the master's fork.

    python tests/bench/lone_worker.py --config etc/gunicorn.conf.py --bind H:P

The same worker class, config and hooks as `gunicorn --workers 1` (on_starting,
post_fork, post_worker_init, on_exit), but the worker runs in the process that
was started: valgrind's gdbserver (callgrind_control -z/-d) only reaches the
process valgrind started, never a forked child. For count_heartbeat.py.
Imports only gunicorn: the herd package is whichever the running Python has.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from gunicorn import sock
    from gunicorn.app.wsgiapp import WSGIApplication
    from gunicorn.arbiter import Arbiter

    application = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]")
    arbiter = Arbiter(application)
    cfg = arbiter.cfg
    cfg.on_starting(arbiter)
    listeners = sock.create_sockets(cfg, arbiter.log)
    worker = arbiter.worker_class(
        1, os.getppid(), listeners, arbiter.app, arbiter.timeout / 2.0, cfg,
        arbiter.log,
    )  # fmt: skip
    worker.pid = os.getpid()
    cfg.post_fork(arbiter, worker)
    try:
        worker.init_process()
    finally:
        cfg.on_exit(arbiter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
