"""Host metrics a node agent reports: psutil, and nvidia-smi where it exists.

`HostMetrics.sample()` returns one JSON-ready dict. Everything is optional on
the router's side: a field the host cannot give (no swap, no sensors, no GPU)
is simply absent, never an error. Swap activity is reported as pages moved
per second since the previous sample, so one burst of swapping long ago does
not count against the node forever.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

NVIDIA_SMI_TIMEOUT_S = 3.0
GPU_QUERY = "index,name,memory.total,memory.used,memory.free,utilization.gpu"


def models_dir() -> Path | None:
    """Where the local Ollama keeps models ($OLLAMA_MODELS, else its defaults)."""
    candidates = [
        os.environ.get("OLLAMA_MODELS"),
        str(Path.home() / ".ollama" / "models"),
        "/usr/share/ollama/.ollama/models",
        "/var/lib/ollama",
    ]
    for path in candidates:
        if path and Path(path).is_dir():
            return Path(path)
    return None


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """GPUs from `nvidia-smi --query-gpu=GPU_QUERY --format=csv,noheader,nounits`
    (MiB values become bytes)."""
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 6:
            continue
        index, name, total, used, free, util = fields

        def num(value: str) -> float | None:
            try:
                number = float(value)
            except ValueError:
                return None  # "[N/A]" on some boards
            # ("nan" and "inf" parse too: no JSON number, the router refuses them.)
            return number if math.isfinite(number) else None

        mib = 1024 * 1024
        gpus.append(
            {
                "index": int(num(index) or 0),
                "name": name,
                "memory_total": int((num(total) or 0) * mib),
                "memory_used": int((num(used) or 0) * mib),
                "memory_free": int((num(free) or 0) * mib),
                "utilization_percent": num(util),
            }
        )
    return gpus


def pressure(path: str = "/proc/pressure/memory") -> float | None:
    """Share of the last 10 s some task stalled on memory (PSI `some avg10`)."""
    try:
        with open(path) as fh:
            first = fh.readline().split()
    except OSError:
        return None
    for item in first[1:]:
        key, _, value = item.partition("=")
        if key == "avg10":
            try:
                return float(value)
            except ValueError:
                return None
    return None


class HostMetrics:
    """Samples the host; remembers the previous swap counters for rates."""

    def __init__(
        self,
        models_path: Path | None = None,
        run: Callable[[list[str], float], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.models_path = models_path or models_dir()
        self._run = run or _run
        self._clock = clock
        self._swap: tuple[float, int, int] | None = None
        self._smi = shutil.which("nvidia-smi")
        psutil.cpu_percent(interval=None)  # the first call only primes the counter

    def sample(self) -> dict[str, Any]:
        mem = psutil.virtual_memory()
        out: dict[str, Any] = {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "cpu_count": psutil.cpu_count() or 1,
            "memory": {"total": mem.total, "available": mem.available},
        }
        try:
            out["load"] = list(os.getloadavg())
        except OSError:
            pass
        swap = psutil.swap_memory()
        out["swap"] = {"total": swap.total, "used": swap.used, **self._swap_rate(swap)}
        psi = pressure()
        if psi is not None:
            out["memory"]["pressure_avg10"] = psi
        if self.models_path is not None:
            try:
                disk = psutil.disk_usage(str(self.models_path))
                out["disk"] = {
                    "path": str(self.models_path),
                    "total": disk.total,
                    "free": disk.free,
                }
            except OSError:
                pass
        temps = _temperatures()
        if temps:
            out["temperatures"] = temps
        gpus = self._gpus()
        if gpus:
            out["gpus"] = gpus
        return out

    def _swap_rate(self, swap: Any) -> dict[str, float]:
        now = self._clock()
        prev, self._swap = self._swap, (now, swap.sin, swap.sout)
        if prev is None or now <= prev[0]:
            return {"in_per_s": 0.0, "out_per_s": 0.0}
        span = now - prev[0]
        return {
            "in_per_s": max(0.0, (swap.sin - prev[1]) / span),
            "out_per_s": max(0.0, (swap.sout - prev[2]) / span),
        }

    def _gpus(self) -> list[dict[str, Any]]:
        if not self._smi:
            return []  # no NVIDIA driver: normal on CPU and non-NVIDIA nodes
        text = self._run(
            [self._smi, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"],
            NVIDIA_SMI_TIMEOUT_S,
        )
        return parse_nvidia_smi(text) if text else []


def _temperatures() -> dict[str, float]:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return {}
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return {}
    readings = {
        name: [e.current for e in entries if math.isfinite(e.current)]
        for name, entries in sensors.items()
    }
    return {name: max(values) for name, values in readings.items() if values}


def _run(argv: list[str], timeout: float) -> str | None:
    from gevent import subprocess

    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
