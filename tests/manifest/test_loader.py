"""Loading manifests: the example is valid, every kind of breakage is one clear line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from herd.errors import ManifestError
from herd.manifest import load_bytes, load_file
from herd.manifest.loader import MAX_BYTES
from tests.conftest import EXAMPLE

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<path>\S+): (?P<msg>.+)$")


def problems_of(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(ManifestError) as info:
        load_bytes(data, "fleet.yaml")
    lines = str(info.value).splitlines()
    assert lines, "a ManifestError must list at least one problem"
    for line in lines:
        assert LINE.match(line), f"not FILE:LINE: path: message: {line!r}"
    return lines


def test_example_manifest_is_valid_and_complete():
    fleet = load_file(EXAMPLE)
    assert fleet.name == "st-anna-radiology"
    assert len(fleet.nodes) == 3 and len(fleet.models) == 4
    assert [c.name for c in fleet.router.clients] == ["radiology", "records", "admins"]
    assert [c.operator for c in fleet.router.clients] == [False, False, True]
    assert fleet.resolve("gpt-4o-mini").name == "llama3.2:3b"
    assert fleet.resolve("LLAMA3.2").name == "llama3.2:3b"
    assert fleet.resolve("nomic-embed-text").name == "nomic-embed-text:latest"
    assert fleet.resolve("mistral") is None
    llama = fleet.resolve("llama3.2:3b")
    assert [n.name for n in fleet.nodes_for(llama)] == ["gpu-a", "gpu-b"]
    assert llama.keep_loaded == "-1"
    assert fleet.bundles.require_scan is True
    assert EXAMPLE.read_text().startswith("# yaml-language-server: $schema=")


def test_relative_paths_resolve_against_the_manifest(tmp_path: Path, example_text):
    f = tmp_path / "fleet.yaml"
    f.write_text(example_text.replace("/etc/herd/allowed_signers", "keys/signers"))
    assert load_file(f).bundles.trusted_signers == str(tmp_path / "keys" / "signers")


def swap(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BREAKAGES = {
    "wrong type": (
        ("max_concurrency: 8", "max_concurrency: eight"),
        "nodes[0].max_concurrency",
        "expected integer",
    ),
    "unknown key": (
        ("audit:\n", "audit:\n  colour: red\n"),
        "audit.colour",
        "unknown key 'colour'",
    ),
    "unknown top key": (
        ("kind: Fleet\n", "kind: Fleet\nspec: {}\n"),
        "spec",
        "unknown key",
    ),
    "bad cidr": (
        ("10.30.0.0/16", "10.300.0.0/16"),
        "router.clients[0].networks[0]",
        "not a valid CIDR",
    ),
    "cidr host bits": (
        ("10.30.0.0/16", "10.30.0.1/16"),
        "router.clients[0].networks[0]",
        "did you mean 10.30.0.0/16",
    ),
    "bad url": (
        ("http://10.20.1.12:11434", "ftp://10.20.1.12"),
        "nodes[1].url",
        "not in the expected form",
    ),
    "url port": (
        ("http://10.20.1.12:11434", "http://10.20.1.12:99999"),
        "nodes[1].url",
        "port",
    ),
    "url outside node_networks": (
        ("http://10.20.1.12:11434", "http://10.99.1.12:11434"),
        "nodes[1].url",
        "outside every network",
    ),
    "duplicate node": (
        ("name: gpu-b", "name: gpu-a"),
        "nodes[1].name",
        "duplicate node name 'gpu-a'",
    ),
    "undeclared fallback": (
        ("fallbacks: [qwen2.5:0.5b]", "fallbacks: [mistral]"),
        "models[0].fallbacks[0]",
        "not a declared model",
    ),
    "placement on unknown node": (
        ("nodes: [gpu-a]", "nodes: [gpu-z]"),
        "models[3].place.nodes[0]",
        "no node named 'gpu-z'",
    ),
    "placement on unknown label": (
        ("labels: {gpu: a100}   ", "labels: {gpu: h100}   "),
        "models[0].place.labels",
        "gpu=h100",
    ),
    "alias clash": (
        ("aliases: [small]", "aliases: [gpt-4o-mini]"),
        "models[1].aliases[0]",
        "already the name or an alias",
    ),
    "client model unknown": (
        (
            "models: [llama3.2:3b, gpt-4o-mini, nomic-embed-text]",
            "models: [llama3.2:3b, claude]",
        ),
        "router.clients[0].models[1]",
        "not a declared model",
    ),
    "bad token": (
        ("token_sha256: 9f86", "token_sha256: XX86"),
        "router.clients[0].token_sha256",
        "not in the expected form",
    ),
    "operator not a boolean": (
        ("      operator: true", "      operator: yes-please"),
        "router.clients[2].operator",
        "expected boolean",
    ),
    "operator open to everyone": (
        ("        - 10.20.0.0/24 ", "        - 0.0.0.0/0 "),
        "router.clients[2].networks[0]",
        "operator group without a token",
    ),
    # Python's `$` also matches before a final newline; a schema's does not.
    "name with a trailing newline": (
        ("  name: st-anna-radiology", '  name: "st-anna-radiology\\n"'),
        "metadata.name",
        "not in the expected form",
    ),
    "wrong apiVersion": (
        ("apiVersion: herd/v1", "apiVersion: herd/v2"),
        "apiVersion",
        "must be 'herd/v1'",
    ),
    "duplicate key": (
        ("kind: Fleet\n", "kind: Fleet\nkind: Fleet\n"),
        "kind",
        "duplicate key",
    ),
    "missing required": (
        ("  name: st-anna-radiology", "  title: st-anna-radiology"),
        "metadata",
        "'name' is required",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_each_breakage_is_reported_at_its_field(case, example_text):
    (old, new), path, needle = BREAKAGES[case]
    lines = problems_of(swap(example_text, old, new))
    first = LINE.match(lines[0])
    assert any(LINE.match(line)["path"] == path for line in lines), lines
    if needle:
        assert any(needle in line for line in lines), lines
    changed_line = swap(example_text, old, new).split(new)[0].count("\n") + 1
    # The reported line points at (or near) the edited text, never line 1 by default.
    assert abs(int(first["line"]) - changed_line) <= 3, (lines, changed_line)


def test_every_problem_is_reported_not_just_the_first(example_text):
    text = swap(example_text, "max_concurrency: 8", "max_concurrency: -1")
    text = swap(text, "retention_days: 180", "retention_days: forever")
    lines = problems_of(text)
    assert any("max_concurrency" in line for line in lines)
    assert any("retention_days" in line for line in lines)


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"", "manifest is empty"),
        (b"# only a comment\n", "manifest is empty"),
        (b"a: [1, 2\n", "invalid YAML"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "binary"),
        (b"\xff\xfe\xfa not utf8", "not valid UTF-8"),
        (b"- just\n- a list\n", "expected object"),
        (b"!!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ],
)
def test_garbage_files(data, needle):
    lines = problems_of(data)
    assert needle in lines[0]


def test_huge_file_is_refused_before_parsing(tmp_path: Path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(50 * 1024 * 1024)  # sparse 50 MB
    with pytest.raises(ManifestError) as info:
        load_file(big)
    assert "limited to" in str(info.value)
    assert len(problems_of(b"a" * (MAX_BYTES + 1))) == 1


def test_alias_bomb_is_refused_without_expanding():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    out = problems_of("\n".join(lines) + "\n")
    assert "alias bomb" in out[0]


def test_anchors_in_moderation_are_fine(example_text):
    text = swap(
        example_text,
        "labels: {gpu: a100, room: b2}",
        "labels: &a100 {gpu: a100, room: b2}",
    )
    text = swap(text, "labels: {gpu: a100, room: b2}", "labels: *a100")
    fleet = load_bytes(text.encode())
    assert fleet.node("gpu-b").labels["gpu"] == "a100"


def test_missing_file_is_one_line(tmp_path: Path):
    with pytest.raises(ManifestError) as info:
        load_file(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_odd_keys_stay_one_token_in_the_path(example_text):
    text = example_text.replace("  name: st-anna-radiology", '  " x\\r": 1')
    lines = problems_of(text)
    assert any('metadata["\\u0020x\\r"]: unknown key' in line for line in lines), lines


def test_precomputed_placements_match_the_placement_rule():
    from tests.bench.bench_manifest import generate

    for text in (EXAMPLE.read_text(), generate(300, 60)):
        fleet = load_bytes(text.encode())
        for model in fleet.models:
            brute = tuple(n for n in fleet.nodes if model.place.matches(n))
            assert fleet.nodes_for(model) == brute, model.name
