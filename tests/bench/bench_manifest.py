"""Benchmark: validate + plan a 1,000-node, 200-model manifest.

Prints each figure as a ratio to a bare `yaml.safe_load` of the same file, measured
in the same run (machines here are noisy; ratios travel, seconds do not).
Target: validate + plan under 1 s on the 2-core reference machine.

    python tests/bench/bench_manifest.py [--nodes 1000] [--models 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import yaml

from herd.manifest import load_bytes
from herd.manifest.plan import diff


def generate(nodes: int, models: int) -> str:
    """A realistic big manifest: racks of labelled nodes, label and list placements."""
    doc = {
        "apiVersion": "herd/v1",
        "kind": "Fleet",
        "metadata": {"name": "bench"},
        "router": {
            "listen": "0.0.0.0:11435",
            "node_networks": ["10.0.0.0/8"],
            "clients": [
                {
                    "name": f"group-{i}",
                    "networks": [f"10.{100 + i}.0.0/16"],
                    "rate_limit": {"requests_per_minute": 600},
                }
                for i in range(20)
            ],
        },
        "nodes": [
            {
                "name": f"node-{i:04d}",
                "url": f"http://10.{i // 250}.{i % 250}.10:11434",
                "labels": {"rack": f"r{i % 40}", "gpu": ["a100", "l40", "none"][i % 3]},
                "max_concurrency": 4 + i % 5,
            }
            for i in range(nodes)
        ],
        "models": [
            {
                "name": f"model-{i:03d}:7b",
                "aliases": [f"alias-{i:03d}"],
                "fallbacks": [f"model-{(i + 1) % models:03d}:7b"],
                "place": (
                    {"labels": {"rack": f"r{i % 40}"}}
                    if i % 2
                    else {
                        "nodes": [f"node-{(i * 5 + k) % nodes:04d}" for k in range(5)]
                    }
                ),
                "keep_loaded": "30m",
            }
            for i in range(models)
        ],
        "audit": {"retention_days": 90},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def best_of(rounds: int, fn) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    text = generate(args.nodes, args.models)
    data = text.encode()
    changed = text.replace("max_concurrency: 4", "max_concurrency: 5").encode()
    old = load_bytes(data, "bench.yaml")

    baseline = best_of(args.rounds, lambda: yaml.safe_load(text))
    validate = best_of(args.rounds, lambda: load_bytes(changed, "bench.yaml"))
    new = load_bytes(changed, "bench.yaml")
    plan = best_of(args.rounds, lambda: diff(old, new))
    both = best_of(args.rounds, lambda: diff(old, load_bytes(changed, "bench.yaml")))
    changes = len(diff(old, new).changes)

    print(
        f"manifest: {args.nodes} nodes, {args.models} models, {len(data):,} bytes; "
        f"plan has {changes} changes"
    )
    print(f"{'step':<22}{'best s':>10}{'median s':>10}{'x yaml.safe_load':>18}")
    for name, (best, median) in (
        ("yaml.safe_load", baseline),
        ("validate (load)", validate),
        ("plan (diff)", plan),
        ("validate + plan", both),
    ):
        print(f"{name:<22}{best:>10.3f}{median:>10.3f}{best / baseline[0]:>18.2f}")
    verdict = "meets" if both[0] < 1.0 else "MISSES"
    print(f"target: validate + plan < 1 s: {verdict} ({both[0]:.3f} s best)")


if __name__ == "__main__":
    main()
