"""Fixtures for router tests: real `herd sim` nodes and `herd serve` routers.

Helpers live in routerproc.py; everything started here is killed in teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.router.routerproc import SIM_MODELS, Router, Sim, start_router, start_sim


@pytest.fixture
def sims() -> Iterator[Any]:
    """Factory: `sims(name, tps=..., extra=(herd sim flags))` starts a sim node;
    all are killed after."""
    started: list[Sim] = []

    def make(
        name: str, tps: float = 0, models: str = SIM_MODELS, extra: tuple[str, ...] = ()
    ) -> Sim:
        sim = start_sim(name, tps, models, extra=extra)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.kill()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Any]:
    """Factory: `router(manifest_text)` runs `herd serve` on a free port."""
    started: list[Router] = []

    def make(
        text: str,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        workers: int = 1,
        env: dict[str, str] | None = None,
    ):
        state = state_dir or tmp_path / f"state{len(started)}"
        log = tmp_path / f"router{len(started)}.log"
        r = start_router(state, text, log, host, workers, env)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()
