"""Commands that only look never create the state directory (nor its database).

A typo in --state-dir must not leave an empty state behind, and `herd plan`
against a state that has nothing applied says so instead of creating one.
"""

from __future__ import annotations

import json

import pytest

from herd.store import Store
from tests.conftest import ROOT

DEMO = str(ROOT / "etc" / "demo.yaml")
SIGNERS = str(ROOT / "tests" / "bundle" / "keys" / "allowed_signers")


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", DEMO],
        ["plan", DEMO],
        ["plan", "--json", DEMO],
        ["history"],
        ["show", "1"],
        ["status"],
        ["health"],
        ["health", "--json"],
        ["bundle", "list"],
        ["bundle", "list", "--json"],
        [
            "bundle",
            "verify",
            str(ROOT / "bundles" / "example"),
            "--trusted-signers",
            SIGNERS,
        ],
    ],
)
def test_looking_never_creates_the_state_dir(herd, state_dir, argv):
    out = herd(*argv)
    assert "Traceback" not in out.stderr
    assert not state_dir.exists(), f"herd {' '.join(argv)} created {state_dir}"


def test_looking_never_creates_the_database_in_an_existing_dir(herd, state_dir):
    state_dir.mkdir()
    for argv in (["plan", DEMO], ["bundle", "list"], ["history"], ["show", "1"]):
        herd(*argv)
        assert list(state_dir.iterdir()) == [], argv


def test_plan_against_a_missing_state_says_everything_is_new(herd, state_dir):
    out = herd("plan", DEMO)
    assert out.returncode == 2, out.stderr  # changes
    first = out.stdout.splitlines()[0]
    assert first == f"No revision applied yet in {state_dir}; everything is new."
    assert "+ node" in out.stdout or "sim" in out.stdout
    as_json = herd("plan", "--json", DEMO)
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["from_revision"] is None  # stdout stays JSON
    assert "No revision applied yet" in as_json.stderr


def test_plan_after_an_apply_does_not_say_so(herd, state_dir):
    assert herd("apply", "--yes", DEMO).returncode == 0
    out = herd("plan", DEMO)
    assert out.returncode == 0, out.stdout
    assert "No revision applied yet" not in out.stdout + out.stderr


def test_a_readonly_store_on_a_missing_dir_is_empty_and_creates_nothing(tmp_path):
    missing = tmp_path / "nope"
    store = Store(missing, readonly=True)
    try:
        assert store.exists is False
        assert store.head() is None and store.revisions() == []
    finally:
        store.close()
    assert not missing.exists()
