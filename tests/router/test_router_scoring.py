"""scoring.choose_node: a pure ranking, replayable and explainable."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from herd.router.routing.scoring import (
    Candidate,
    Decision,
    Ranked,
    RouteRequest,
    choose_node,
)

REQ = RouteRequest("llama3.2:3b")


def cand(node: str, **kw) -> Candidate:
    base = dict(up=True, loaded=False, on_disk=True, in_flight=0, max_concurrency=4)
    return Candidate(node=node, **{**base, **kw})


def test_loaded_beats_on_disk_even_when_busier():
    d = choose_node(REQ, (cand("a"), cand("b", loaded=True, in_flight=3)))
    assert d.nodes == ("b", "a")


def test_free_slot_beats_full_node():
    d = choose_node(
        REQ, (cand("a", loaded=True, in_flight=4), cand("b", loaded=True, in_flight=1))
    )
    assert d.nodes == ("b", "a")


def test_down_and_missing_nodes_are_excluded_with_reasons():
    d = choose_node(
        REQ, (cand("a", up=False), cand("b", on_disk=False), cand("c", up=None))
    )
    assert d.nodes == ("c",)
    assert dict(d.excluded) == {"a": "down", "b": "model not on node"}
    assert "c=" in d.explain() and "a excluded (down)" in d.explain()


def test_errors_and_latency_push_a_node_down():
    d = choose_node(REQ, (cand("a", error_rate=0.8), cand("b")))
    assert d.nodes == ("b", "a")
    d = choose_node(REQ, (cand("a", ttft_ms=1500.0), cand("b", ttft_ms=100.0)))
    assert d.nodes == ("b", "a")


def test_ties_break_on_name():
    assert choose_node(REQ, (cand("b"), cand("a"))).nodes == ("a", "b")


names = st.sampled_from(["n1", "n2", "n3", "n4"])
candidates = st.lists(
    st.builds(
        Candidate,
        node=names,
        up=st.sampled_from([True, False, None]),
        loaded=st.booleans(),
        on_disk=st.sampled_from([True, False, None]),
        in_flight=st.integers(0, 10),
        max_concurrency=st.integers(1, 8),
        ttft_ms=st.none() | st.floats(0, 1e5),
        tokens_per_s=st.none() | st.floats(0, 1e3),
        error_rate=st.floats(0, 1),
        # Every field named: a named tuple's defaults are drawn too otherwise
        # (a NaN pressure, which an agent's report can never carry).
        waiting=st.integers(0, 10),
        labels=st.just({}),
        model_bytes=st.none() | st.integers(0, 2**40),
        memory_available=st.none() | st.integers(0, 2**40),
        swap_per_s=st.floats(0, 1e9),
        memory_pressure=st.none() | st.floats(0, 100),
    ),
    max_size=4,
    unique_by=lambda c: c.node,
)


@given(candidates)
def test_deterministic_and_complete(cs):
    first = choose_node(REQ, tuple(cs))
    again = choose_node(REQ, tuple(reversed(cs)))
    assert first.nodes == again.nodes  # input order never matters
    assert set(first.nodes) | {n for n, _ in first.excluded} == {c.node for c in cs}
    scores = [r.score for r in first.ranked]
    assert scores == sorted(scores, reverse=True)


# -- memory fit and preferred labels (what `herd node` agents report) ---------

GB = 1024**3


def test_a_cold_model_larger_than_free_memory_is_not_sent_there():
    from herd.router.routing.scoring import parse_prefer  # noqa: F401 - same module

    small = cand("small", model_bytes=4 * GB, memory_available=2 * GB)
    big = cand("big", model_bytes=4 * GB, memory_available=64 * GB, in_flight=3)
    d = choose_node(REQ, (small, big))
    assert d.nodes == ("big",)
    assert dict(d.excluded) == {"small": "memory: model needs 4.0 GB, 2.0 GB free"}
    assert d.memory_decided


def test_memory_does_not_matter_when_loaded_or_unknown():
    loaded = cand("a", loaded=True, model_bytes=4 * GB, memory_available=1 * GB)
    unknown = cand("b", model_bytes=4 * GB)
    d = choose_node(REQ, (loaded, unknown))
    assert set(d.nodes) == {"a", "b"} and not d.memory_decided


def test_swapping_and_memory_pressure_push_a_node_down():
    calm, swapping = cand("a"), cand("b", swap_per_s=50 * 1024 * 1024)
    assert choose_node(REQ, (swapping, calm)).nodes == ("a", "b")
    pressed = cand("c", memory_pressure=40.0)
    d = choose_node(REQ, (pressed, calm))
    assert d.nodes == ("a", "c") and d.memory_decided
    assert "memory pressure 40%" in d.explain()
    assert "swapping" in choose_node(REQ, (swapping,)).explain()


def test_preferred_labels_win_among_equals_but_not_over_loaded():
    from herd.router.routing.scoring import RouteRequest

    prefer = RouteRequest("llama3.2:3b", {"gpu": "a100"})
    a, b = cand("a"), cand("b", labels={"gpu": "a100"})
    assert choose_node(prefer, (a, b)).nodes == ("b", "a")
    assert choose_node(REQ, (a, b)).nodes == ("a", "b")
    loaded = cand("a", loaded=True)
    assert choose_node(prefer, (loaded, b)).nodes == ("a", "b")


def test_prefer_header_parsing():
    import pytest

    from herd.router.routing.scoring import parse_prefer

    assert parse_prefer("gpu=a100, room=b2") == {"gpu": "a100", "room": "b2"}
    assert parse_prefer(None) == {}
    for bad in ("gpu", "=a100", "gpu=", "a=b,,c=d"):
        with pytest.raises(ValueError, match="X-Herd-Prefer"):
            parse_prefer(bad)


def test_one_candidate_decides_the_same_named_tuples_as_several():
    """The one-node fast path builds its Decision and Ranked whole: the same
    values, types and defaults as the general path's constructors."""
    c = cand("a", loaded=True)
    one = choose_node(REQ, (c,))
    assert type(one) is Decision and type(one.ranked[0]) is Ranked
    assert one == Decision(REQ.model, (Ranked("a", one.ranked[0].score, c),), ())
    assert one.excluded == () and one.nodes == ("a",)
    two = choose_node(REQ, (c, cand("b", up=False)))
    assert two.ranked == one.ranked


def test_forwarder_candidates_are_the_named_tuple_with_its_defaults():
    """`Forwarder.candidates` builds each Candidate whole (every field given):
    equal to the keyword constructor's, defaults included; an agent's memory
    facts still replace theirs."""
    from types import SimpleNamespace

    from herd.router.routing.forward import Forwarder

    node = SimpleNamespace(name="a", max_concurrency=4, labels={"gpu": "x"})
    fleet = SimpleNamespace(nodes_for=lambda model: [node])
    health = SimpleNamespace(up=True, loaded={"m"}, on_disk={"m"})
    forwarder = Forwarder(
        health=SimpleNamespace(get=lambda n: health),
        queues=SimpleNamespace(load=lambda name: (1, 2)),
        stats=SimpleNamespace(
            perf=lambda name, key: (30.0, 5.0), error_rate=lambda name: 0.25
        ),
        upstream=None,
    )
    (got,) = forwarder.candidates(fleet, SimpleNamespace(name="m"))
    want = Candidate(
        node="a",
        up=True,
        loaded=True,
        on_disk=True,
        in_flight=1,
        max_concurrency=4,
        waiting=2,
        ttft_ms=30.0,
        tokens_per_s=5.0,
        error_rate=0.25,
        labels={"gpu": "x"},
    )
    assert type(got) is Candidate and got == want
    forwarder.health.memory = lambda node, health, key: {"memory_available": 7}
    (got,) = forwarder.candidates(fleet, SimpleNamespace(name="m"))
    assert got == want._replace(memory_available=7)
