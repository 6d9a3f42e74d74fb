"""Fixtures for the bundle tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from herd.bundle.policy import Policy
from herd.store import Store
from tests.bundle.bundle_helpers import ALLOWED


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return Policy(trusted_signers=ALLOWED, require_scan=True, store=tmp_path / "store")


@pytest.fixture
def state(state_dir: Path):
    store = Store(state_dir)
    yield store
    store.close()
