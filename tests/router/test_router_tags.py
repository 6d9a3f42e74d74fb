"""Request tags end to end: `X-Herd-Tag` and OpenAI's `metadata.tags` / `user`
through a real router (gunicorn + gevent) in front of a `herd sim` node, stored
in traces.db, grouped by `herd traces stats`, and bad tags refused with a 400
that names the header or field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.router.routerproc import ROOT, manifest, start_router, start_sim
from tests.router.test_router_faults import traces

pytestmark = pytest.mark.e2e

HELLO = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tags")
    node = start_sim("node-a")
    router = start_router(tmp / "state", manifest([node]), tmp / "router.log")
    try:
        router.wait_nodes_up(1)
        yield router
    finally:
        router.stop()
        node.kill()


def native(router, tags=None, path="/api/chat", **body):
    headers = {"X-Herd-Tag": tags} if tags is not None else {}
    return httpx.post(
        router.url + path, json={**HELLO, "stream": False, **body},
        headers=headers, timeout=30,
    )  # fmt: skip


def rows_for(router, marker: str, count: int) -> list[dict]:
    """The trace rows whose tags include `marker`, once `count` are written."""

    def mine(rows):
        return [r for r in rows if marker in (r.get("tags") or "").split(",")]

    return mine(traces(router.state_dir, lambda rows: len(mine(rows)) >= count, 8))


def test_header_tags_are_stored_and_grouped(fleet):
    assert native(fleet, "app:wiki, team/ops").status_code == 200
    assert native(fleet, "app:wiki").status_code == 200
    # A stream records its trace when it ends; the tags are still there.
    with httpx.stream(
        "POST", fleet.url + "/api/chat", json={**HELLO, "stream": True},
        headers={"X-Herd-Tag": "app:wiki"}, timeout=30,
    ) as reply:  # fmt: skip
        assert reply.status_code == 200
        reply.read()
    rows = rows_for(fleet, "app:wiki", 3)
    assert sorted(r["tags"] for r in rows) == [
        "app:wiki", "app:wiki", "app:wiki,team/ops",
    ]  # fmt: skip
    env = {**os.environ, "HERD_STATE_DIR": str(fleet.state_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "herd", "traces", "stats", "--by", "tag", "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    by_tag = {e["key"]: e for e in json.loads(result.stdout)["by"]["tag"]}
    assert by_tag["app:wiki"]["count"] == 3
    assert by_tag["team/ops"]["count"] == 1
    assert by_tag["app:wiki"]["errors"] == 0


def test_openai_metadata_tags_and_user(fleet):
    client = openai.OpenAI(base_url=fleet.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        **HELLO, user="alice@example.org", metadata={"tags": "app:notebook,exp-7"},
        extra_headers={"X-Herd-Tag": "app:notebook, via-header"},
    )  # fmt: skip
    assert reply.choices[0].message.content
    client.embeddings.create(model="nomic-embed-text", input="x", user="bob")
    [row] = rows_for(fleet, "app:notebook", 1)
    # Header tags first, then the body's; duplicates once; user as user:NAME.
    assert row["tags"] == "app:notebook,via-header,exp-7,user:alice@example.org"
    [row] = rows_for(fleet, "user:bob", 1)
    assert row["route"] == "/v1/embeddings"


@pytest.mark.parametrize(
    ("tags", "named"),
    [
        ("has space", "X-Herd-Tag"),
        ("semi;colon", "X-Herd-Tag"),
        ("-leading-dash", "X-Herd-Tag"),
        ("a," * 3 + ",b", "X-Herd-Tag"),
        ("x" * 65, "X-Herd-Tag"),
        (",".join(f"t{i}" for i in range(9)), "X-Herd-Tag"),
        (",".join(["same"] * 2000), "X-Herd-Tag"),
        ("caf\u00e9".encode().decode("latin-1"), "X-Herd-Tag"),
    ],
)
def test_bad_header_tags_are_refused(fleet, tags, named):
    reply = httpx.post(
        fleet.url + "/api/chat", json=HELLO,
        headers={"X-Herd-Tag": tags.encode("latin-1")}, timeout=30,
    )  # fmt: skip
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(f"{named}: ")
    reply = httpx.post(
        fleet.url + "/v1/chat/completions", json=HELLO,
        headers={"X-Herd-Tag": tags.encode("latin-1")}, timeout=30,
    )  # fmt: skip
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{named}: ")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"metadata": {"tags": "ok,not ok"}}, "metadata.tags"),
        ({"metadata": {"tags": ["ok", 7]}}, "metadata.tags"),
        ({"metadata": {"tags": {"a": 1}}}, "metadata.tags"),
        ({"metadata": {"tags": ",".join(f"t{i}" for i in range(9))}}, "metadata.tags"),
        ({"metadata": "tags"}, "'metadata'"),
        ({"user": "alice smith"}, "user"),
        ({"user": "u" * 60}, "user"),
        ({"user": 42}, "user"),
    ],
)
def test_bad_body_tags_are_refused(fleet, body, named):
    reply = httpx.post(
        fleet.url + "/v1/chat/completions", json={**HELLO, **body}, timeout=30
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["message"].startswith(named)


def test_too_many_tags_together_are_refused(fleet):
    reply = httpx.post(
        fleet.url + "/v1/chat/completions",
        json={**HELLO, "metadata": {"tags": "b1,b2,b3,b4"}},
        headers={"X-Herd-Tag": "h1,h2,h3,h4,h5"}, timeout=30,
    )  # fmt: skip
    assert reply.status_code == 400
    assert "at most 8" in reply.json()["error"]["message"]


def test_a_refused_request_is_traced_without_its_tags(fleet):
    marker = f"probe{int(time.time() * 1000)}"
    reply = native(fleet, f"{marker},bad tag")
    assert reply.status_code == 400
    rows = traces(
        fleet.state_dir,
        lambda rows: any(r["status"] == 400 and r["route"] == "/api/chat" for r in rows),  # noqa: E501
        8,
    )  # fmt: skip
    assert not any(marker in (r["tags"] or "") for r in rows)
    assert any(
        r["status"] == 400 and r["error_class"] == "InvalidRequest" for r in rows
    )
