"""The plan is a pure, deterministic diff of two fleets."""

from __future__ import annotations

from herd.manifest import load_bytes
from herd.manifest.plan import ADD, CHANGE, REMOVE, diff


def fleet(text: str):
    return load_bytes(text.encode())


def test_first_apply_adds_everything(example_text):
    plan = diff(None, fleet(example_text))
    kinds = {(c.kind, c.action) for c in plan.changes}
    assert kinds == {("node", ADD), ("model", ADD), ("placement", ADD), ("client", ADD)}
    assert plan.summary() == "+3 nodes, +4 models, +6 placements, +3 clients"


def test_identical_fleets_give_an_empty_plan(example_text):
    plan = diff(fleet(example_text), fleet(example_text))
    assert plan.empty and plan.summary() == "no changes"
    assert "No changes" in plan.table()


def test_changes_removals_and_placements(example_text):
    old = fleet(example_text)
    text = example_text.replace("max_concurrency: 2", "max_concurrency: 3")
    text = text.replace("nodes: [cpu-c, gpu-b]", "nodes: [gpu-b]")
    text = text.replace("    - name: radiology", "    - name: imaging")
    plan = diff(old, fleet(text))
    rows = {(c.kind, c.name, c.action) for c in plan.changes}
    assert ("node", "cpu-c", CHANGE) in rows
    assert ("placement", "qwen2.5:0.5b @ cpu-c", REMOVE) in rows
    assert ("client", "radiology", REMOVE) in rows
    assert ("client", "imaging", ADD) in rows
    node = next(c for c in plan.changes if c.kind == "node")
    assert dict(node.fields) == {"max_concurrency": (2, 3)}
    assert "max_concurrency: 2 → 3" in plan.table()


def test_label_change_moves_placements(example_text):
    old = fleet(example_text)
    text = example_text.replace(
        "labels: {gpu: a100, room: b2}", "labels: {gpu: none, room: b2}", 1
    ).replace("replicas: 2", "replicas: 1")
    plan = diff(old, fleet(text))
    assert ("placement", "llama3.2:3b @ gpu-a", REMOVE) in {
        (c.kind, c.name, c.action) for c in plan.changes
    }


def test_settings_sections_are_diffed(example_text):
    old = fleet(example_text)
    new = fleet(
        example_text.replace("retention_days: 180", "retention_days: 30").replace(
            "queue_timeout_s: 30", "queue_timeout_s: 5"
        )
    )
    rows = {c.kind: dict(c.fields) for c in diff(old, new).changes}
    assert rows["audit"] == {"retention_days": (180, 30)}
    assert rows["router"]["limits"][0]["queue_timeout_s"] == 30


def test_order_and_json_are_deterministic(example_text):
    a = diff(None, fleet(example_text)).as_json()
    b = diff(None, fleet(example_text)).as_json()
    assert a == b
    kinds = [c["kind"] for c in a["changes"]]
    assert kinds == sorted(kinds, key=["node", "model", "placement", "client"].index)
    names = [c["name"] for c in a["changes"] if c["kind"] == "node"]
    assert names == sorted(names)


def test_operator_permission_shows_in_the_plan(example_text):
    old = fleet(example_text)
    text = example_text.replace("      operator: true\n", "")
    plan = diff(old, fleet(text))
    client = next(c for c in plan.changes if c.kind == "client")
    assert client.name == "admins"
    assert dict(client.fields) == {"operator": (True, False)}
