"""The fleet plan as pure functions: replica choice, bundle checks, prune, warm."""

from __future__ import annotations

import dataclasses

from herd.manifest.model import Fleet, Model, Node, Placement, Router
from herd.reconcile import actions, render
from herd.reconcile.actions import Imported
from herd.reconcile.inventory import NodeInventory
from herd.reconcile.placement import choose


def node(name: str, **labels: str) -> Node:
    return Node(name, f"http://127.0.0.1:1{len(name)}/{name}", labels=labels)


def fleet(nodes, models) -> Fleet:
    return Fleet(name="t", router=Router(), nodes=tuple(nodes), models=tuple(models))


def inv(name: str, *models: str, loaded=(), reachable=True) -> NodeInventory:
    return NodeInventory(
        name,
        "",
        reachable,
        error=None if reachable else "connection refused",
        models={m: "d" for m in models},
        loaded=frozenset(loaded),
    )


GPUS = [node(f"gpu-{c}", gpu="a100") for c in "abcdef"]
CATALOG = {"tiny:latest": Imported("tiny:latest", "b1", 1000)}


def model(replicas=None, **kw) -> Model:
    return Model(
        "tiny:latest",
        place=Placement(labels={"gpu": "a100"}, replicas=replicas),
        bundle=kw.pop("bundle", "b1"),
        **kw,
    )


def test_replicas_pick_n_nodes_deterministically():
    m = model(replicas=2)

    def names(nodes):
        return {n.name for n in choose(m, tuple(nodes), {})}

    first = names(GPUS)
    assert len(first) == 2
    assert names(GPUS) == first
    # Stable across unrelated edits: reordered nodes, another node added.
    assert names(reversed(GPUS)) == first
    again = names([*GPUS, node("gpu-z", gpu="a100")])
    assert len(again) == 2
    assert again == first or again - first == {"gpu-z"}


def test_replicas_prefer_nodes_that_hold_the_model():
    m = model(replicas=2)
    default = {n.name for n in choose(m, tuple(GPUS), {})}
    holders = [n.name for n in GPUS if n.name not in default][:2]
    inventory = {h: inv(h, "tiny:latest") for h in holders}
    assert {n.name for n in choose(m, tuple(GPUS), inventory)} == set(holders)


def test_replicas_then_free_disk():
    m = model(replicas=1)
    roomy = GPUS[3].name
    inventory = {
        n.name: NodeInventory(
            n.name, "", True, free_bytes=10**12 if n.name == roomy else 10**9
        )
        for n in GPUS
    }
    assert [n.name for n in choose(m, tuple(GPUS), inventory)] == [roomy]


def test_plan_pulls_missing_leaves_undeclared_and_prunes_only_when_asked():
    f = fleet(GPUS[:2], [model(keep_loaded="-1")])
    inventory = {"gpu-a": inv("gpu-a", "tiny:latest", "old:1"), "gpu-b": inv("gpu-b")}
    plan = actions.build(f, inventory, CATALOG, {"b1"})
    a, b = plan.nodes
    assert (
        a.pulls == () and a.present == ("tiny:latest",) and a.warms == ("tiny:latest",)
    )
    assert a.undeclared == ("old:1",) and a.prunes == ()
    assert [p.model for p in b.pulls] == ["tiny:latest"] and b.pulls[0].size == 1000
    assert b.warms == ("tiny:latest",)
    assert plan.changes == 3
    pruned = actions.build(f, inventory, CATALOG, {"b1"}, prune=True)
    assert pruned.nodes[0].prunes == ("old:1",)
    text = render.table(pruned, f)
    assert "- delete old:1" in " ".join(text.split())
    assert "1 pull (1000 B), 1 delete, 2 warm-ups" in text


def test_loaded_models_need_no_warm_up_and_a_synced_fleet_has_no_changes():
    f = fleet(GPUS[:1], [model(keep_loaded="-1")])
    inventory = {"gpu-a": inv("gpu-a", "tiny:latest", loaded=["tiny:latest"])}
    plan = actions.build(f, inventory, CATALOG, {"b1"})
    assert plan.changes == 0 and not plan.errors


def test_bundle_not_imported_is_an_error_naming_it():
    f = fleet(GPUS[:1], [model(bundle="site-2026-12")])
    plan = actions.build(f, {"gpu-a": inv("gpu-a")}, CATALOG, {"b1"})
    assert any("'site-2026-12' is not imported" in e for e in plan.errors)
    assert plan.nodes[0].pulls == ()


def test_bundle_without_the_model_is_an_error():
    f = fleet(GPUS[:1], [model(bundle="b2")])
    plan = actions.build(f, {"gpu-a": inv("gpu-a")}, CATALOG, {"b1", "b2"})
    assert plan.errors == (
        "models[0].bundle: bundle 'b2' does not contain tiny:latest (it comes from "
        "bundle 'b1')",
    )


def test_model_without_bundle_must_already_be_there():
    f = fleet(GPUS[:2], [model(bundle=None)])
    inventory = {"gpu-a": inv("gpu-a", "tiny:latest"), "gpu-b": inv("gpu-b")}
    plan = actions.build(f, inventory, {}, set())
    assert len(plan.errors) == 1 and "not on node gpu-b" in plan.errors[0]


def test_unreachable_node_is_not_planned_but_reported():
    f = fleet(GPUS[:2], [model()])
    inventory = {"gpu-a": inv("gpu-a", reachable=False), "gpu-b": inv("gpu-b")}
    plan = actions.build(f, inventory, CATALOG, {"b1"})
    assert plan.unreachable == ("gpu-a",)
    assert plan.nodes[0].pulls == () and len(plan.nodes[1].pulls) == 1
    text = render.table(plan, f)
    assert "unreachable: connection refused" in text
    # Models are placed there: the plan cannot make the fleet so (exit 1).
    assert plan.unsatisfied == (
        "node gpu-a is unreachable (connection refused): cannot check or pull "
        "tiny:latest there",
    )
    assert "Cannot be satisfied:" in text
    assert plan.as_json()["unsatisfied"] == list(plan.unsatisfied)


def test_unreachable_node_with_nothing_placed_is_only_noted():
    f = fleet([*GPUS[:1], node("cpu-a", cpu="yes")], [model()])
    inventory = {"gpu-a": inv("gpu-a"), "cpu-a": inv("cpu-a", reachable=False)}
    plan = actions.build(f, inventory, CATALOG, {"b1"})
    assert plan.unreachable == ("cpu-a",) and plan.unsatisfied == ()
    pruning = actions.build(f, inventory, CATALOG, {"b1"}, prune=True)
    assert len(pruning.unsatisfied) == 1 and "--prune" in pruning.unsatisfied[0]


def test_free_disk_is_shown_or_unknown():
    f = fleet(GPUS[:2], [model()])
    inventory = {
        "gpu-a": NodeInventory("gpu-a", "", True, free_bytes=5 << 30),
        "gpu-b": inv("gpu-b"),
    }
    plan = actions.build(f, inventory, CATALOG, {"b1"})
    text = render.table(plan, f)
    assert "free disk 5.0 GiB" in text and "free disk unknown" in text
    assert [n.as_json()["free_disk"] for n in plan.nodes] == [5 << 30, None]


def test_keep_loaded_zero_needs_no_warm_up():
    f = fleet(GPUS[:2], [model(keep_loaded="0")])
    inventory = {"gpu-a": inv("gpu-a", "tiny:latest"), "gpu-b": inv("gpu-b")}
    plan = actions.build(f, inventory, CATALOG, {"b1"})
    assert [n.warms for n in plan.nodes] == [(), ()]
    assert [len(n.pulls) for n in plan.nodes] == [0, 1]


def test_what_nodes_report_is_escaped_in_the_plan():
    # A model name on a node, and a node's error, are the node's own text.
    f = fleet(GPUS[:2], [model()])
    inventory = {
        "gpu-a": inv("gpu-a", "tiny:latest", "evil\n  + pull x\x1b[2J:1"),
        "gpu-b": inv("gpu-b", reachable=False),
    }
    inventory["gpu-b"] = dataclasses.replace(
        inventory["gpu-b"], error="refused\nforged"
    )
    plan = actions.build(f, inventory, CATALOG, {"b1"}, prune=True)
    text = render.table(plan, f)
    assert "evil\\n  + pull x\\x1b[2J:1" in text and "refused\\nforged" in text
    assert all(line.isprintable() for line in text.splitlines())
    assert not any(
        line.startswith(("  + pull x", "forged")) for line in text.splitlines()
    )
