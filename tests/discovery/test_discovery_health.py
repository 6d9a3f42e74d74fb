"""health: poll results -> node state (pure transitions)."""

from __future__ import annotations

from herd.discovery.health import (
    DOWN_AFTER,
    NodeHealth,
    PollResult,
    connection_refused,
    model_key,
    observe,
)


def test_up_after_one_good_poll_with_models():
    h = observe(
        NodeHealth("n", "http://x"),
        PollResult(
            ok=True,
            version="0.33.0",
            tags=({"model": "10.0.0.1:11435/library/Llama3.2:3B"}, {"name": "nomic"}),
            ps=({"model": "llama3.2:3b"},),
        ),
        now=5.0,
    )
    assert h.up and h.version == "0.33.0" and h.last_ok == 5.0
    # The registry's long name is not the short one until `herd apply` copies it.
    assert h.on_disk == {"10.0.0.1:11435/library/llama3.2:3b", "nomic:latest"}
    assert h.loaded == {"llama3.2:3b"}


def test_down_after_consecutive_failures_and_back():
    h = observe(NodeHealth("n", "u"), PollResult(ok=True), 1.0)
    for i in range(DOWN_AFTER):
        assert h.up
        h = observe(h, PollResult(ok=False, error="timeout"), 2.0 + i)
    assert h.up is False and h.last_error == "timeout" and not h.loaded
    h = observe(h, PollResult(ok=True), 9.0)
    assert h.up and h.failures == 0


def test_refused_connection_is_down_at_once():
    h = observe(NodeHealth("n", "u"), PollResult(ok=True), 1.0)
    assert connection_refused(h, "refused", 2.0).up is False


def test_model_key():
    assert model_key("router:11435/library/x:1") == "router:11435/library/x:1"
    assert model_key("registry.ollama.ai/library/x:1") == "x:1"
    assert model_key("X") == "x:latest"


def test_recent_success_outweighs_a_failed_poll():
    h = observe(NodeHealth("n", "u"), PollResult(ok=True), 1.0)
    for t in (2.0, 2.5):
        h = observe(h, PollResult(ok=False, error="poll timeout"), t, served_at=1.9)
    assert h.up and h.failures == 0
    for t in (5.0, 6.0):
        h = observe(h, PollResult(ok=False, error="poll timeout"), t, served_at=1.9)
    assert h.up is False
