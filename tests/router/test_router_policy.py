"""policy: client groups by address, bearer tokens, model allowlists, rate limits."""

from __future__ import annotations

import hashlib

import pytest

from herd.errors import Forbidden, ModelNotAllowed, RateLimited, Unauthorized
from herd.manifest.model import build_fleet
from herd.router.policy import Policy, RateLimiter, bearer_token

SHA = hashlib.sha256(b"tok").hexdigest()
FLEET = build_fleet(
    {
        "metadata": {"name": "p"},
        "router": {
            "clients": [
                {"name": "ops", "networks": ["10.0.0.0/24"], "token_sha256": SHA},
                {"name": "lan", "networks": ["10.0.0.0/16"], "models": ["a"]},
                {"name": "v6", "networks": ["fd00::/8"], "token_sha256": SHA},
            ]
        },
        "nodes": [{"name": "n", "url": "http://10.1.0.1:11434"}],
        "models": [{"name": "a"}, {"name": "b"}],
    }
)


def test_groups_by_address_and_token():
    p = Policy(FLEET)
    assert p.admit("10.0.0.5", "Bearer tok").name == "ops"
    assert p.admit("10.0.0.5", None).name == "lan"  # token-less group also matches
    assert p.admit("10.0.9.9", "Bearer wrong").name == "lan"
    with pytest.raises(Forbidden):
        p.admit("192.168.1.1", None)
    with pytest.raises(Forbidden):
        p.admit("not-an-ip", None)
    with pytest.raises(Unauthorized, match="requires"):
        p.admit("fd00::1", None)
    with pytest.raises(Unauthorized, match="does not match"):
        p.admit("fd00::1", "Bearer nope")
    assert p.admit("::ffff:10.0.0.5", "Bearer tok").name == "ops"  # v4-mapped


def test_model_allowlist():
    lan = Policy(FLEET).admit("10.0.9.9", None)
    Policy.check_model(lan, FLEET.resolve("a"))
    with pytest.raises(ModelNotAllowed):
        Policy.check_model(lan, FLEET.resolve("b"))


def test_bearer_parsing():
    assert bearer_token("Bearer  x ") == "x"
    assert bearer_token("bearer x") == "x"
    assert bearer_token("Basic x") is None and bearer_token("Bearer ") is None


def test_token_bucket_refills():
    now = [0.0]
    limiter = RateLimiter(lambda: now[0])
    fleet = build_fleet(
        {
            "metadata": {"name": "r"},
            "router": {
                "clients": [
                    {
                        "name": "c",
                        "networks": ["10.0.0.0/8"],
                        "rate_limit": {"requests_per_minute": 60, "burst": 2},
                    }
                ]
            },
            "nodes": [],
            "models": [],
        }
    )
    client = fleet.router.clients[0]
    limiter.take(client)
    limiter.take(client)
    with pytest.raises(RateLimited) as info:
        limiter.take(client)
    assert info.value.headers["Retry-After"] == "1"
    now[0] += 1.0
    limiter.take(client)
