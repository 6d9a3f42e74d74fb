"""The `herd bundle` commands through the real CLI, in subprocesses."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from herd.bundle.create import DEFAULT_SPLIT, parse_size
from herd.bundle.progress import Progress
from herd.store import Store
from tests.bundle.bundle_helpers import ALLOWED, EXAMPLE, TEST_KEY, tiny_gguf

SIGNERS = ("--trusted-signers", str(ALLOWED))


def test_verify_writes_nothing(herd, state_dir):
    ok = herd("bundle", "verify", str(EXAMPLE), *SIGNERS, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    assert not state_dir.exists()


def test_connected_side_to_air_gapped_side(herd, tmp_path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(tiny_gguf())
    template = tmp_path / "template.txt"
    template.write_text("{{ .Prompt }}")
    report = tmp_path / "clamav.txt"
    report.write_text("OK\n")
    out = tmp_path / "usb" / "site-2026-11"
    made = herd(
        "bundle", "create", str(out), "--from-gguf", str(gguf), "--name", "tiny:q1",
        "--template", str(template), "--params", '{"stop": ["</s>"]}',
        "--scan-report", str(report), "--scan-verdict", "clean",
        "--scan-tool", "clamav",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    signed = herd("bundle", "sign", str(out), "--key", str(TEST_KEY))
    assert signed.returncode == 0, signed.stderr
    assert (out / "bundle.yaml.sig").read_text().startswith("-----BEGIN SSH SIGNATURE")

    ok = herd("bundle", "verify", str(out), *SIGNERS)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: bundle site-2026-11")

    dry = herd("bundle", "import", str(out), *SIGNERS, "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout)["dry_run"] is True
    listed = herd("bundle", "list", "--json")
    assert json.loads(listed.stdout)["models"] == []

    imported = herd("bundle", "import", str(out), *SIGNERS, "--json")
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert result["models"] == ["tiny:q1"] and result["signer"].startswith("herd-test")
    assert imported.stderr == ""  # no progress bar when not a TTY

    listed = json.loads(herd("bundle", "list", "--json").stdout)
    [model] = listed["models"]
    assert model["model"] == "tiny:q1" and model["scan"] == "clean"
    table = herd("bundle", "list").stdout
    assert "tiny:q1" in table and "site-2026-11" in table

    refused = herd("bundle", "rm", "site-2026-11")
    assert refused.returncode == 1 and "--yes" in refused.stderr
    removed = herd("bundle", "rm", "site-2026-11", "--yes", "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["models"] == ["tiny:q1"]


def test_verify_failure_is_one_line_and_exit_1(herd, tmp_path):
    import shutil

    stick = tmp_path / "stick"
    shutil.copytree(EXAMPLE, stick)
    (stick / "blobs" / "evil.sh").write_text("#!/bin/sh\n")
    bad = herd("bundle", "verify", str(stick), *SIGNERS)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("herd bundle: blobs/evil.sh: not listed")
    imported = herd("bundle", "import", str(stick), *SIGNERS)
    assert imported.returncode == 1 and "not listed" in imported.stderr


def test_import_without_trusted_signers_refuses(herd, state_dir):
    done = herd("bundle", "import", str(EXAMPLE))
    assert done.returncode == 1
    assert "never imports unsigned bundles" in done.stderr
    state = Store(state_dir)
    [row] = state.audit_rows()
    state.close()
    assert row["action"] == "bundle.refused" and "trusted signers" in row["detail"]


def test_import_uses_the_applied_manifest(herd, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "allowed_signers").write_bytes(ALLOWED.read_bytes())
    fleet = site / "fleet.yaml"
    fleet.write_text(
        "apiVersion: herd/v1\nkind: Fleet\nmetadata: {name: t}\n"
        "router: {listen: '127.0.0.1:11435', node_networks: [127.0.0.0/8]}\n"
        "nodes: [{name: n1, url: 'http://127.0.0.1:11434'}]\n"
        "models: [{name: 'tiny:latest', place: {nodes: [n1]}}]\n"
        "bundles: {trusted_signers: allowed_signers, store: models}\n"
    )
    applied = herd("apply", str(fleet), "--yes")
    assert applied.returncode == 0, applied.stderr
    done = herd("bundle", "import", str(EXAMPLE), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["store"] == str(site / "models")
    assert (site / "models/manifests/registry.ollama.ai/library/tiny/latest").exists()


@pytest.mark.parametrize("action", ["create", "sign", "verify", "import", "list", "rm"])
def test_every_subcommand_help_has_examples(herd, action):
    done = herd("bundle", action, "--help")
    assert done.returncode == 0
    assert "examples:\n  herd bundle " + action in done.stdout


def test_progress_line_shows_bytes_rate_and_eta():
    out = io.StringIO()
    bar = Progress(4 << 30, stream=out, enabled=True, interval=0)
    bar.started -= 2.0
    bar.advance(1 << 30)
    line = out.getvalue()
    assert "25.0%" in line and "1.0 GiB / 4.0 GiB" in line
    assert "MiB/s" in line and "ETA 0:0" in line
    silent = io.StringIO()
    Progress(10, stream=silent, enabled=False).advance(5)
    assert silent.getvalue() == ""


def test_split_size_parsing():
    assert parse_size("3.9G") == int(3.9 * (1 << 30))
    assert parse_size("500M") == 500 << 20
    assert parse_size("0") is None
    with pytest.raises(Exception, match="not a size"):
        parse_size("lots")


def test_default_split_fits_fat32():
    assert DEFAULT_SPLIT < 4 << 30


def test_from_gguf_needs_a_model_name(herd, tmp_path):
    out = Path(tmp_path / "o")
    done = herd("bundle", "create", str(out), "--from-gguf", str(EXAMPLE / "x"))
    assert done.returncode == 1 and "--name" in done.stderr
