"""What the agent samples is JSON the router takes: finite numbers only."""

from __future__ import annotations

import json
from types import SimpleNamespace

from herd.node import metrics
from herd.node.metrics import parse_nvidia_smi
from herd.router.api.body import parse


def test_gpu_readings_that_are_not_finite_numbers_are_left_out():
    text = (
        "0, NVIDIA A100, 81920, 1024, 80896, 30\n"
        "1, NVIDIA A100, nan, inf, [N/A], -inf\n"
    )
    gpus = parse_nvidia_smi(text)
    assert gpus[0]["memory_used"] == 1024 * 1024 * 1024
    assert gpus[0]["utilization_percent"] == 30.0
    assert gpus[1]["memory_total"] == gpus[1]["memory_used"] == 0
    assert gpus[1]["utilization_percent"] is None
    parse(json.dumps({"gpus": gpus}).encode())  # the router takes it


def test_temperature_sensors_reading_nan_are_left_out(monkeypatch):
    def sensors():
        reading = SimpleNamespace
        return {
            "coretemp": [reading(current=50.0), reading(current=float("nan"))],
            "broken": [reading(current=float("nan"))],
            "empty": [],
        }

    monkeypatch.setattr(metrics.psutil, "sensors_temperatures", sensors, raising=False)
    assert metrics._temperatures() == {"coretemp": 50.0}
