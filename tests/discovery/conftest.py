"""Fixtures for discovery tests: sims and routers on loopback, and network
namespaces for everything that sends multicast."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.discovery.netns import NetPair, unavailable
from tests.router.conftest import router, sims  # noqa: F401 - shared fixtures


@pytest.fixture
def netpair() -> Iterator[NetPair]:
    """Two fresh network namespaces joined by a veth pair (multicast on)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    pair = NetPair.create()
    try:
        yield pair
    finally:
        pair.destroy()
