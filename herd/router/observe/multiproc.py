"""The directory where every gunicorn worker keeps its Prometheus counters.

With several workers, each process counts its own requests; a scrape lands on
one of them. prometheus_client's multiprocess mode has each worker write its
values to memory-mapped files in one directory (PROMETHEUS_MULTIPROC_DIR), and
the worker answering /metrics adds them all up. This module manages that
directory from the gunicorn master (etc/gunicorn.conf.py hooks):

- `prepare()` (on_starting): a private directory for this router, made with
  mkdtemp (0700) unless PROMETHEUS_MULTIPROC_DIR names one; either way it is
  emptied first, so counts from an earlier run never leak into this one. It
  must run before any worker imports prometheus_client: the library picks its
  storage once, at import, from the environment.
- `worker_gone(pid)` (child_exit): drops a dead worker's live gauges (in-flight,
  waiting); its counters stay, so totals never go backwards.
- `cleanup()` (on_exit): removes the directory if `prepare()` made it.

Nothing here imports prometheus_client at module level: the gunicorn master
must not import it before the environment is set, or forked workers would
inherit single-process storage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The directory `prepare()` created (and `cleanup()` removes), if any.
_created: str | None = None


def prepare() -> str:
    """Make (or empty) the directory and export it to the workers to come."""
    global _created
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return given
    _created = tempfile.mkdtemp(prefix="herd-metrics-")
    os.environ[ENV] = _created
    return _created


def worker_gone(pid: int) -> None:
    """A worker exited: its live gauges no longer count."""
    path = os.environ.get(ENV)
    if not path or not os.path.isdir(path):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)


def cleanup() -> None:
    """The router stops: remove the directory `prepare()` made."""
    global _created
    if _created is not None:
        shutil.rmtree(_created, ignore_errors=True)
        _created = None
