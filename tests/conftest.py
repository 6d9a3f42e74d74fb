"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "etc" / "fleet.yaml"

# Tests run as root on hosts with systemd: `herd apply` must never write the
# router's address allowlist into the real /etc/systemd/system.
os.environ.setdefault("HERD_SYSTEMD_DROPIN_DIR", "off")
# Nor the keepalived configuration of a manifest with router.ha.
os.environ.setdefault("HERD_KEEPALIVED_CONF", "off")


@pytest.fixture
def example_text() -> str:
    return EXAMPLE.read_text()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def herd(state_dir: Path):
    """Run the real `herd` CLI in a subprocess with a temporary state dir."""

    def run(
        *args: str,
        stdin: str | None = None,
        env: dict | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "HERD_STATE_DIR": str(state_dir), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "herd", *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=ROOT,
        )

    return run


# `herd plan/apply` contact the manifest's nodes; the example fleets name LAN
# addresses, which tests must never reach. So, for every test and fixture,
# they diff and record revisions only ...
os.environ["HERD_APPLY_NODES"] = "0"


@pytest.fixture(autouse=True)
def _node_traffic_only_when_marked(request: pytest.FixtureRequest, monkeypatch):
    """... except in tests marked `nodes`: their fleets are `herd sim` nodes on
    loopback, and their `herd` commands run with the setting unset, the
    default a user gets (survey and change the nodes)."""
    if request.node.get_closest_marker("nodes"):
        monkeypatch.delenv("HERD_APPLY_NODES", raising=False)


@pytest.fixture(autouse=True, scope="session")
def _private_test_keys() -> None:
    """git does not keep file modes beyond +x: ssh-keygen refuses a 0644 private key."""
    for key in (ROOT / "tests").rglob("*_ed25519"):
        key.chmod(0o600)


#: The test files that take longest (`pytest --durations`, summed per file), in
#: that order. The suite runs on xdist workers, a file to a worker: these start
#: first, so that no long file starts last while the other workers sit idle. A
#: scheduling hint only: files not named here run after, in collection order.
SLOW_FIRST = (
    "tests/test_state.py",
    "tests/router/test_router_faults.py",
    "tests/test_cli.py",
    "tests/discovery/test_heartbeat_router.py",
    "tests/router/test_serve_startup.py",
    "tests/ops/test_audit_chain.py",
    "tests/reconcile/test_apply_e2e.py",
    "tests/test_readme.py",
    "tests/discovery/test_mdns_netns.py",
    "tests/service/test_wheelhouse.py",
    "tests/bundle/test_bundle_cli.py",
    "tests/node/test_agent.py",
    "tests/service/test_notify.py",
    "tests/ops/test_traces_cli.py",
    "tests/ha/test_keepalived_netns.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
