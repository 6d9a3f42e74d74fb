"""Manifest keys for other backends: nodes[].api, nodes[].token_file, models[].kind,
router.limits.max_audio_mb; and what `herd plan` does with an OpenAI node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from herd.errors import ManifestError
from herd.manifest import load_bytes
from herd.manifest.plan import plain
from herd.reconcile import actions, inventory

TOKEN = "tok-0123456789abcdef"


def _doc(**node: object) -> dict:
    return {
        "apiVersion": "herd/v1",
        "kind": "Fleet",
        "metadata": {"name": "t"},
        "nodes": [{"name": "vllm", "url": "http://127.0.0.1:8000", **node}],
        "models": [
            {"name": "Qwen/Qwen3-8B", "place": {"nodes": ["vllm"]}},
            {"name": "whisper-large-v3", "place": {"nodes": ["vllm"]}},
            {"name": "flux.1-schnell", "place": {"nodes": ["vllm"]}},
            {"name": "bge-m3", "kind": "embed", "place": {"nodes": ["vllm"]}},
            {"name": "speech", "kind": "transcribe", "place": {"nodes": ["vllm"]}},
        ],
    }


def _load(doc: dict, base: Path) -> object:
    return load_bytes(yaml.safe_dump(doc).encode(), "fleet.yaml", str(base))


def _token(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "node.token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, mode)
    return path


def test_defaults_and_inferred_kinds(tmp_path: Path) -> None:
    fleet = _load(_doc(), tmp_path)
    assert fleet.nodes[0].api == "ollama" and fleet.nodes[0].auth is None
    kinds = {m.name: m.kind for m in fleet.models}
    assert kinds == {
        "qwen/qwen3-8b:latest": "chat",
        "whisper-large-v3:latest": "transcribe",
        "flux.1-schnell:latest": "image",
        "bge-m3:latest": "embed",
        "speech:latest": "transcribe",
    }
    assert fleet.router.limits.max_audio_mb == 200


def test_token_file_is_read_and_never_rendered(tmp_path: Path) -> None:
    _token(tmp_path)
    fleet = _load(_doc(api="openai", token_file="node.token"), tmp_path)
    node = fleet.nodes[0]
    assert node.api == "openai" and node.auth == {"Authorization": f"Bearer {TOKEN}"}
    assert node.token_file == str(tmp_path / "node.token")
    assert TOKEN not in repr(fleet) and TOKEN not in str(plain(fleet))


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        (lambda p: _token(p, 0o644), "chmod 600"),
        (lambda p: None, "cannot read"),
        (lambda p: (_token(p), (p / "node.token").write_text("")), "is empty"),
        (lambda p: (_token(p), (p / "node.token").write_text("a b")), "printable"),
    ],
)
def test_bad_token_files_are_one_clear_line(tmp_path: Path, setup, says) -> None:
    setup(tmp_path)
    with pytest.raises(ManifestError) as info:
        _load(_doc(api="openai", token_file="node.token"), tmp_path)
    message = str(info.value)
    assert "nodes[0].token_file" in message and says in message
    assert TOKEN not in message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"api": "vllm"}, "api"),
        ({"token_file": ""}, "token_file"),
    ],
)
def test_schema_refuses_bad_values(tmp_path: Path, change: dict, field: str) -> None:
    with pytest.raises(ManifestError, match=field):
        _load(_doc(**change), tmp_path)


def test_bad_kind_and_audio_limit(tmp_path: Path) -> None:
    doc = _doc()
    doc["models"][0]["kind"] = "video"
    with pytest.raises(ManifestError, match="kind"):
        _load(doc, tmp_path)
    doc = _doc()
    doc["router"] = {"limits": {"max_audio_mb": 0}}
    with pytest.raises(ManifestError, match="max_audio_mb"):
        _load(doc, tmp_path)


def test_plan_never_pulls_onto_an_openai_node(tmp_path: Path) -> None:
    fleet = _load(_doc(api="openai"), tmp_path)
    listing = {"object": "list", "data": [{"id": "Qwen/Qwen3-8B"}, {"id": "other"}]}
    asked = []

    def get_json(url: str, timeout: float) -> object:
        asked.append(url)
        return listing

    found = inventory.survey(fleet, get_json)
    assert asked == ["http://127.0.0.1:8000/v1/models"]
    assert found["vllm"].holds("qwen/qwen3-8b")
    plan = actions.build(fleet, found, {}, set(), prune=True)
    node = plan.nodes[0]
    assert node.pulls == () and node.prunes == () and node.warms == ()
    assert node.present == ("qwen/qwen3-8b:latest",)
    assert any("OpenAI-compatible server" in e for e in plan.errors)
