"""Tests contact nodes only when marked `nodes` (their fleets are loopback sims);
those run `herd plan/apply` with the setting unset, as a user does."""

from __future__ import annotations

import os

import pytest


def test_unmarked_tests_contact_no_node():
    assert os.environ["HERD_APPLY_NODES"] == "0"


@pytest.mark.nodes
def test_marked_tests_run_the_default():
    assert "HERD_APPLY_NODES" not in os.environ
