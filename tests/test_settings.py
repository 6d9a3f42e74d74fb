"""Settings are declared once; the README table and the schema defaults follow them."""

from __future__ import annotations

import dataclasses

from herd.manifest import model
from herd.manifest.schema import schema
from herd.settings import SETTINGS, docs_table
from tests.conftest import ROOT


def test_readme_settings_table_matches_settings():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- settings-table -->\n")[1].split("<!-- /settings-table")[
        0
    ]
    assert block.strip() == docs_table().strip(), (
        "README settings table drifted; paste herd.settings.docs_table()"
    )
    for setting in SETTINGS:
        assert setting.env.startswith("HERD_")


def test_dataclass_defaults_mirror_schema_defaults():
    props = schema()["properties"]
    limits = props["router"]["properties"]["limits"]["properties"]
    for f in dataclasses.fields(model.Limits):
        assert limits[f.name]["default"] == f.default, f.name
    assert props["router"]["properties"]["listen"]["default"] == model.Router.listen
    node = schema()["$defs"]["node"]["properties"]
    assert node["max_concurrency"]["default"] == model.Node.max_concurrency
    audit = props["audit"]["properties"]["retention_days"]["default"]
    assert audit == model.Audit.retention_days
    scan = props["bundles"]["properties"]["require_scan"]["default"]
    assert scan == model.Bundles.require_scan


def test_every_schema_field_has_a_description():
    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, sub in (node.get("properties") or {}).items():
                has = "description" in sub or (
                    "$ref" in sub
                    and "description" in schema()["$defs"][sub["$ref"].split("/")[-1]]
                )
                if not has:
                    missing.append(f"{path}.{key}")
            for key, sub in node.items():
                walk(sub, f"{path}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]")

    walk(schema(), "")
    assert not missing, missing


def test_herd_environment_is_read_only_through_settings():
    """Every HERD_* variable is a declared Setting; nothing reads one on the side."""
    import re

    declared = {s.env for s in SETTINGS}
    sources = [*(ROOT / "herd").rglob("*.py"), ROOT / "etc" / "gunicorn.conf.py"]
    for path in sources:
        if path.name == "settings.py":
            continue
        text = path.read_text()
        for match in re.finditer(r"environ(?:\.get)?[\[(]\s*['\"](HERD_\w+)", text):
            raise AssertionError(f"{path}: reads {match.group(1)} directly")
        for name in re.findall(r"\bHERD_[A-Z_]+\b", text):
            assert name in declared, f"{path}: {name} is not a declared setting"
