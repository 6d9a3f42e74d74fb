"""/metrics on a real router with two gunicorn workers: every worker's counts add
up, refusals are counted, labels stay bounded, and promtool accepts the output.

Requests go over fresh connections from several loopback source addresses (one
per client group), so the kernel hands them to both workers; each scrape lands
on either worker and must still see every request sent so far.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from herd.router.observe.metrics import Metrics
from herd.router.routing.forward import Outcome
from herd.store import Store
from tests.router.routerproc import TOKEN_SHA, manifest

pytestmark = pytest.mark.e2e

LOCAL, LIMITED, SECURE, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"
#: Routes that are the test's own traffic (probes and scrapes are not counted).
OPS = ("/healthz", "/readyz", "/metrics", "/fleet/status")

CLIENTS = [
    {"name": "local", "networks": [f"{LOCAL}/32"], "models": ["llama3.2:3b"]},
    {
        "name": "limited",
        "networks": [f"{LIMITED}/32"],
        "rate_limit": {"requests_per_minute": 1, "burst": 1},
    },
    {"name": "secure", "networks": [f"{SECURE}/32"], "token_sha256": TOKEN_SHA},
    {"name": "ops", "networks": ["127.0.0.5/32", "::1/128"], "operator": True},
]


def call(url: str, path: str, body: Any = None, source: str = LOCAL) -> int:
    """One request on a new connection from `source`; the whole reply is read."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(
        host, int(port), timeout=10, source_address=(source, 0)
    )
    try:
        if body is None:
            conn.request("GET", path)
        else:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            conn.request(
                "POST", path, body=data, headers={"Content-Type": "application/json"}
            )
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def scrape(url: str) -> tuple[str, dict[str, Any]]:
    """The /metrics text and its families by name (parsed by prometheus_client)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(
        host, int(port), timeout=10, source_address=("127.0.0.5", 0)
    )
    try:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        text = reply.read().decode()
        assert reply.status == 200, text
        assert reply.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    finally:
        conn.close()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict[str, Any], name: str, sample: str | None = None) -> list:
    family = families.get(name)
    if family is None:
        return []
    return [s for s in family.samples if s.name == (sample or name)]


def total(
    families: dict[str, Any], name: str, sample: str | None = None, **labels: str
) -> float:
    """The sum of a family's samples that carry `labels`."""
    return sum(
        s.value
        for s in samples(families, name, sample)
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }


#: (route, body, source) of each kind of request the test sends.
KINDS = {
    "ok_chat": ("/api/chat", chat("fast"), LOCAL),
    "ok_stream": ("/api/chat", chat("llama3.2:3b", stream=True), LOCAL),
    "ok_openai": ("/v1/chat/completions", chat("llama3.2:3b"), LOCAL),
    "not_allowed": ("/api/chat", chat("qwen3:0.6b"), LOCAL),
    "unknown_model": ("/api/chat", chat("no-such-model"), LOCAL),
    "bad_json": ("/api/chat", b"{not json", LOCAL),
    "no_token": ("/api/chat", chat("llama3.2:3b"), SECURE),
    "no_group": ("/api/chat", chat("llama3.2:3b"), STRANGER),
    "rate_limited": ("/api/generate", {"model": "fast", "prompt": "x"}, LIMITED),
    "unrouted": ("/no/such/route", None, LOCAL),
}
EXPECTED = {
    "ok_chat": {200},
    "ok_stream": {200},
    "ok_openai": {200},
    "not_allowed": {403},
    "unknown_model": {404},
    "bad_json": {400},
    "no_token": {401},
    "no_group": {403},
    "rate_limited": {200, 429},
    "unrouted": {404},
}


def test_metrics_add_up_across_two_workers(sims, router, tmp_path: Path):
    node = sims("node-a")
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    (multiproc / "counter_999999.db").write_bytes(b"stale counts from a last run")
    r = router(
        manifest([node], clients=CLIENTS),
        workers=2,
        env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
    )
    r.wait_nodes_up(1)
    assert not (multiproc / "counter_999999.db").exists(), "the directory was wiped"
    # The kernel picks which worker accepts each connection: on a loaded
    # machine one worker can take them all. Knock (on an ops route the counts
    # below leave out) until both have served and written their values.
    deadline = time.monotonic() + 30
    while len(list(multiproc.glob("histogram_*.db"))) < 2:
        assert time.monotonic() < deadline, "one worker took every connection"
        for _ in range(10):
            call(r.url, "/healthz")
        time.sleep(0.2)

    sent: Counter = Counter()  # (route, status) -> requests
    kinds: Counter = Counter()  # (kind, status) -> requests
    route_of = {"unrouted": "(unrouted)"}
    for round_ in range(4):
        for kind, (path, body, source) in KINDS.items():
            status = call(r.url, path, body, source)
            assert status in EXPECTED[kind], (kind, status)
            sent[(route_of.get(kind, path), str(status))] += 1
            kinds[(kind, status)] += 1
        text, families = scrape(r.url)
        counted: Counter = Counter()
        for s in samples(families, "herd_requests", "herd_requests_total"):
            if s.labels["route"] not in OPS:
                counted[(s.labels["route"], s.labels["status"])] += int(s.value)
        assert counted == sent, f"scrape {round_}: {counted} != {sent}"

    # Histograms and token counts are written every second by each worker.
    chats = sum(n for (route, _), n in sent.items() if route == "/api/chat")
    duration = "herd_request_duration_seconds", "herd_request_duration_seconds_count"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text, families = scrape(r.url)
        if total(families, *duration, route="/api/chat") == chats:
            break
        time.sleep(0.3)
    assert total(families, *duration, route="/api/chat") == chats

    f = families
    # Both workers wrote values (one file per process and kind of value; every
    # request is observed in herd_request_duration_seconds, while the request
    # counts themselves live in the fleet state the workers share).
    pids = {p.stem.rsplit("_", 1)[1] for p in multiproc.glob("histogram_*.db")}
    assert len(pids) == 2, pids

    requests = ("herd_requests", "herd_requests_total")
    # Labels: an alias counts as its model, an undeclared model is "other",
    # refusals carry the group when one was known.
    ok = kinds[("ok_chat", 200)] + kinds[("ok_stream", 200)]
    ok_chats = total(f, *requests, route="/api/chat", model="llama3.2:3b", status="200")
    assert ok_chats == ok
    assert total(f, *requests, model="other", status="404") == 4
    models = {s.labels["model"] for s in samples(families, *requests)}
    assert models == {"", "llama3.2:3b", "qwen3:0.6b", "other"}, models
    assert total(f, *requests, group="local", status="403", model="qwen3:0.6b") == 4
    assert total(f, *requests, group="", status="403") == 4  # no group admits it
    assert total(f, *requests, node="node-a", group="local", status="200") == 12
    # ACL and rate-limit refusals.
    acl = "herd_acl_refusals", "herd_acl_refusals_total"
    assert total(f, *acl, group="local", reason="model_not_allowed") == 4
    assert total(f, *acl, reason="unauthorized") == 4
    assert total(f, *acl, group="", reason="forbidden") == 4
    limited = kinds[("rate_limited", 429)]
    assert limited >= 2, "burst 1 per worker: most of 4 quick requests are refused"
    rate = "herd_rate_limit_refusals", "herd_rate_limit_refusals_total"
    assert total(f, *rate, group="limited") == limited
    # Histograms and tokens of the served requests.
    assert total(f, *duration, route="/api/chat") == chats
    ttft = "herd_time_to_first_token_seconds", "herd_time_to_first_token_seconds_count"
    assert total(f, *ttft, node="node-a") > 0
    assert total(f, "herd_tokens_out", "herd_tokens_out_total", node="node-a") > 0
    assert total(f, "herd_tokens_in", "herd_tokens_in_total", group="local") > 0
    # Node health is each worker's view of the polls (a slow poll on a loaded
    # machine can mark the node down for a round): wait for it, bounded.
    deadline = time.monotonic() + 15
    while total(f, "herd_node_up", node="node-a") != 1 and time.monotonic() < deadline:
        time.sleep(0.3)
        _, f = scrape(r.url)
    assert total(f, "herd_node_up", node="node-a") == 1
    assert total(f, "herd_node_slots", node="node-a") == 8
    assert "herd_node_in_flight" in families and "herd_traces_pending" in families

    # Every family has HELP and TYPE, names follow the conventions, and
    # Prometheus' own linter accepts the real output.
    for family in families.values():
        assert family.name.startswith("herd_"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        # Counters are exposed as NAME_total (the parser strips the suffix).
        exposed = family.name + ("_total" if family.type == "counter" else "")
        assert f"# TYPE {exposed} {family.type}\n" in text, exposed
        assert f"# HELP {exposed} " in text, exposed
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (Debian package prometheus; see .ci/run)"
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr

    # A bad apply is one reload error however many workers refuse it.
    store = Store(r.state_dir)
    store.record(
        b"kind: nonsense\n",
        expected_head=store.head().id,
        summary="bad",
        source="test",
        base_dir=str(r.state_dir),
    )
    store.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if r.log_path.read_text().count("new manifest refused") >= 2:
            break
        time.sleep(0.2)
    assert r.log_path.read_text().count("new manifest refused") == 2, "both refused"
    time.sleep(1.5)  # each worker copies its counts every second
    _, families = scrape(r.url)
    assert total(families, "herd_reload_failing") == 1
    assert total(families, "herd_reload_errors", "herd_reload_errors_total") == 1


def test_in_flight_streams_add_up_across_workers(sims, router):
    node = sims("slow", tps=4)
    r = router(manifest([node], clients=CLIENTS), workers=2)
    r.wait_nodes_up(1)
    host, port = r.url.removeprefix("http://").rsplit(":", 1)

    def in_flight() -> float:
        return sum(s.value for s in samples(scrape(r.url)[1], "herd_node_in_flight"))

    streams = []
    try:
        for _ in range(3):
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request(
                "POST",
                "/api/generate",
                body=json.dumps({"model": "fast", "prompt": "x", "num_predict": 400}),
            )
            reply = conn.getresponse()
            assert reply.status == 200
            reply.readline()  # the stream is open
            streams.append(conn)

        deadline = time.monotonic() + 15
        while in_flight() != 3 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert in_flight() == 3
    finally:
        for conn in streams:
            conn.close()
    deadline = time.monotonic() + 15
    while in_flight() != 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert in_flight() == 0


# -- in process ---------------------------------------------------------------


class _Fleet:
    def __init__(self) -> None:
        from types import SimpleNamespace as NS

        self.models = [NS(name="llama3.2:3b", aliases=("fast",))]
        self.nodes = [NS(name="node-a")]


def _outcome(**kw: Any) -> Outcome:
    base = {"t0": 0.0, "started": 0.0, "route": "/api/chat", "method": "POST"}
    return Outcome(**{**base, **kw})


def _values(metrics: Metrics) -> dict[tuple, float]:
    text = metrics.render(lambda: []).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_model_labels_are_declared_models_only():
    metrics = Metrics(multiproc_dir="")
    metrics.configure(_Fleet())
    for name in ("fast", "llama3.2:3b", "x" * 200, "another", None):
        metrics.request(_outcome(requested_model=name, status=404), 0.001)
    models = Counter()
    for (name, labels), value in _values(metrics).items():
        if name == "herd_requests_total":
            models[dict(labels)["model"]] += value
    assert models == {"llama3.2:3b": 2, "other": 2, "": 1}


def test_fallbacks_retries_and_sampled_counters():
    from types import SimpleNamespace as NS

    metrics = Metrics(multiproc_dir="")
    metrics.configure(_Fleet())
    metrics.request(
        _outcome(
            requested_model="fast",
            served_model="other-model",
            node="node-a",
            status=200,
            retries=2,
        ),
        0.5,
    )
    queues = NS(in_flight=lambda node: 3, waiting=lambda node: 1)
    traces = NS(pending=5, written=10, dropped=1, write_failures=2)
    source = NS(last_error="bad manifest", refusals=1)
    metrics.sample(queues, traces, source)
    traces.written = 15
    metrics.sample(queues, traces, source)
    values = _values(metrics)
    assert values[("herd_retries_total", (("model", "other"),))] == 2
    assert values[
        (
            "herd_fallbacks_total",
            (("model", "other"), ("requested_model", "llama3.2:3b")),
        )
    ]
    assert values[("herd_traces_written_total", ())] == 15
    assert values[("herd_traces_dropped_total", ())] == 1
    assert values[("herd_reload_errors_total", ())] == 1
    assert values[("herd_reload_failing", ())] == 1
    assert values[("herd_traces_pending", ())] == 5
