"""Fleet keys, heartbeat parsing and the admission rules (pure, in-process)."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
import time

import pytest

from herd.discovery import fleetkey
from herd.discovery.heartbeat import Heartbeat, admit, check_source, parse
from herd.discovery.membership import Membership
from herd.discovery.source import merge
from herd.errors import HerdError, InvalidRequest
from herd.manifest import load_bytes
from tests.discovery.agentkit import discovery_manifest
from tests.router.routerproc import Sim


def fleet(tmp_path, **kw):
    sim = Sim(proc=None, url="http://127.0.0.1:11434", name="static-a")
    text = discovery_manifest([sim], tmp_path / "fleet.key", **kw)
    return load_bytes(text.encode(), "test", str(tmp_path))


def hb(name="gpu-d", url="http://127.0.0.1:12000", **extra) -> Heartbeat:
    return parse({"name": name, "url": url, **extra})


def test_keygen_writes_0600_and_never_overwrites(tmp_path):
    key = fleetkey.generate()
    path = fleetkey.write(tmp_path / "keys" / "fleet.key", key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert fleetkey.load(path) == (key,)
    with pytest.raises(HerdError, match="exists"):
        fleetkey.write(path, fleetkey.generate())


def test_key_file_may_hold_several_keys_for_rotation(tmp_path):
    old, new = fleetkey.generate(), fleetkey.generate()
    path = tmp_path / "keys"
    path.write_text(f"# rotating\n{old.secret.hex()}\n\n{new.secret.hex()}\n")
    keys = fleetkey.load(path)
    body = b'{"name": "x"}'
    for key in (old, new):
        h = fleetkey.sign(key, body, time.time())
        found = fleetkey.verify(
            keys, h[fleetkey.HEADER_TIMESTAMP], h[fleetkey.HEADER_NONCE], body,
            h[fleetkey.HEADER_SIGNATURE],
        )  # fmt: skip
        assert found == key


@pytest.mark.parametrize("size", [16, 32, 64, 65, 100])
def test_mac_is_rfc2104_hmac_sha256_for_any_key_length(size):
    """mac() starts from cached pad states; it must stay plain HMAC-SHA256."""
    key = fleetkey.FleetKey(os.urandom(size))
    for body in (b"", b'{"name": "x"}', os.urandom(3000)):
        message = fleetkey.CONTEXT + b"1700000000\n" + b"ab" * 16 + b"\n" + body
        expected = hmac.new(key.secret, message, hashlib.sha256).hexdigest()
        got = fleetkey.mac(key, "1700000000", "ab" * 16, body)
        assert got == fleetkey.SCHEME + expected


@pytest.mark.parametrize("text", ["", "# only a comment\n", "zz\n", "abcd\n"])
def test_bad_key_files_are_one_clear_error(tmp_path, text):
    path = tmp_path / "fleet.key"
    path.write_text(text)
    with pytest.raises(HerdError, match="fleet.key"):
        fleetkey.load(path)


def test_signature_covers_body_timestamp_and_nonce():
    key = fleetkey.generate()
    h = fleetkey.sign(key, b"body", 1000)
    ts, nonce, sig = (
        h[fleetkey.HEADER_TIMESTAMP],
        h[fleetkey.HEADER_NONCE],
        h[fleetkey.HEADER_SIGNATURE],
    )
    assert fleetkey.verify([key], ts, nonce, b"body", sig) == key
    assert fleetkey.verify([key], ts, nonce, b"body ", sig) is None
    assert fleetkey.verify([key], "1001", nonce, b"body", sig) is None
    assert fleetkey.verify([key], ts, "0" * 32, b"body", sig) is None
    assert fleetkey.verify([fleetkey.generate()], ts, nonce, b"body", sig) is None


@pytest.mark.parametrize(
    "doc, field",
    [
        ([], "JSON object"),
        ({"url": "http://10.0.0.1:1"}, "name"),
        ({"name": "UPPER", "url": "http://10.0.0.1:1"}, "name"),
        # ($ would match before a final newline: one in a name reaches the logs)
        ({"name": "gpu-a\n", "url": "http://10.0.0.1:1"}, "name"),
        (
            {"name": "a", "url": "http://10.0.0.1:1", "inventory": "ab" * 8 + "\n"},
            "inventory",
        ),
        ({"name": "a"}, "url"),
        ({"name": "a", "url": "http://host.lan:11434"}, "IP address"),
        ({"name": "a", "url": "https://10.0.0.1:11434"}, "url"),
        ({"name": "a", "url": "http://10.0.0.1"}, "port required"),
        ({"name": "a", "url": "http://10.0.0.1:1/api"}, "no path"),
        ({"name": "a", "url": "http://u:p@10.0.0.1:1"}, "credentials"),
        # (urlsplit drops tabs and line breaks: the URL kept must be the one parsed)
        ({"name": "a", "url": "http://10.0.0.1:1\n"}, "http://10.0.0.1:1"),
        ({"name": "a", "url": "http://10.0.\t0.1:1"}, "http://10.0.0.1:1"),
        ({"name": "a", "url": "http://10.0.0.1:011434"}, "http://10.0.0.1:11434"),
        ({"name": "a", "url": "http://[FE80::0001]:1"}, "http://[fe80::1]:1"),
        ({"name": "a", "url": "HTTP://10.0.0.1:1"}, "url"),
        ({"name": "a", "url": "http://10.0.0.1:1", "interval_s": "5"}, "interval_s"),
        ({"name": "a", "url": "http://10.0.0.1:1", "interval_s": 0}, "interval_s"),
        ({"name": "a", "url": "http://10.0.0.1:1", "goodbye": 1}, "goodbye"),
        ({"name": "a", "url": "http://10.0.0.1:1", "metrics": []}, "metrics"),
        ({"name": "a", "url": "http://10.0.0.1:1", "models": {}}, "models"),
        ({"name": "a", "url": "http://10.0.0.1:1", "models": None}, "models"),
        ({"name": "a", "url": "http://10.0.0.1:1", "loaded": None}, "loaded"),
        ({"name": "a", "url": "http://10.0.0.1:1", "models": [1]}, "models[0]"),
        ({"name": "a", "url": "http://10.0.0.1:1", "loaded": [{}]}, "loaded[0]"),
    ],
)
def test_malformed_heartbeats_name_the_field(doc, field):
    with pytest.raises(InvalidRequest, match=re.escape(field)):
        parse(doc)


def test_lists_left_out_are_empty_like_lists_sent_empty():
    base = {"name": "a", "url": "http://10.0.0.1:1"}
    left_out = parse(base)
    sent_empty = parse({**base, "models": [], "loaded": []})
    assert left_out.models == left_out.loaded == sent_empty.models == ()
    assert left_out == sent_empty


def test_admission_rules(tmp_path):
    f = fleet(tmp_path, networks=["127.0.0.0/30"])

    def ok(heartbeat, address="127.0.0.1", held=None):
        held = held or {}
        by_url = {url: name for name, (_, url) in held.items()}
        return admit(f, heartbeat, address, held.get, by_url.get)

    assert ok(hb()).admitted
    assert check_source(f, "127.0.0.1") is None
    assert check_source(f, "127.0.0.9").status == 403
    assert check_source(f, "::ffff:127.0.0.1") is None
    assert ok(hb(url="http://192.168.9.9:1")).status == 403
    static = ok(hb(name="static-a"))
    assert not static.admitted and "static node" in static.reason
    merged = ok(hb(name="whatever", url="http://127.0.0.1:11434"))
    assert merged.admitted and merged.static_name == "static-a"
    held = {"gpu-d": ("127.0.0.1", "http://127.0.0.1:12000")}
    assert ok(hb(), held=held).admitted
    assert ok(hb(), "127.0.0.2", held).status == 409
    assert ok(hb(name="gpu-e"), "127.0.0.2", held).status == 409  # same URL


def test_source_answers_follow_a_reloaded_manifest(tmp_path):
    """Source checks are remembered per manifest: a new one is asked anew."""
    wide = fleet(tmp_path, networks=["127.0.0.0/30"])
    narrow = fleet(tmp_path, networks=["127.0.0.2/32"])
    for _ in range(2):
        assert check_source(wide, "127.0.0.1") is None
        assert check_source(narrow, "127.0.0.1").status == 403
        assert check_source(narrow, "127.0.0.2") is None
        assert check_source(wide, None).status == 403


def test_discovered_nodes_get_defaults_and_overrides(tmp_path):
    f = fleet(
        tmp_path,
        overrides={"gpu-big": {"labels": {"gpu": "a100"}, "max_concurrency": 9}},
    )
    members = Membership()
    members.beat(hb("gpu-big", "http://127.0.0.1:12001"), "127.0.0.1", None, "agent")
    members.beat(hb("gpu-d"), "127.0.0.1", None, "agent")
    members.beat(
        hb("host-of-a", "http://127.0.0.1:11434"), "127.0.0.1", "static-a", "agent"
    )
    merged = merge(f, members)
    nodes = {n.name: n for n in merged.nodes}
    assert set(nodes) == {"static-a", "gpu-big", "gpu-d"}
    assert dict(nodes["gpu-big"].labels) == {"pool": "agents", "gpu": "a100"}
    assert nodes["gpu-big"].max_concurrency == 9
    assert dict(nodes["gpu-d"].labels) == {"pool": "agents"}
    assert nodes["gpu-d"].max_concurrency == 3
    qwen = merged.resolve("qwen3:0.6b")
    assert [n.name for n in merged.nodes_for(qwen)] == ["gpu-big", "gpu-d"]


def test_membership_is_shared_between_workers_and_nonces_between_them(tmp_path):
    now = [1000.0]
    one = Membership(tmp_path / "d.db", clock=lambda: now[0], monotonic=lambda: now[0])
    two = Membership(tmp_path / "d.db", clock=lambda: now[0], monotonic=lambda: now[0])
    assert one.use_nonce("ab" * 8, 30)
    assert not two.use_nonce("ab" * 8, 30)  # a replay to the other worker
    one.beat(hb(), "127.0.0.1", None, "agent")
    now[0] += 1
    one.check(15)  # (every request and every health poll does this)
    two.check(15)
    assert "gpu-d" in two.members
    one.leave("gpu-d", "127.0.0.1", "goodbye")
    now[0] += 1
    two.check(15)
    assert "gpu-d" not in two.members
    one.beat(hb(), "127.0.0.1", None, "agent")
    now[0] += 20  # silent past the timeout
    generation = one.generation
    one.check(15)
    assert "gpu-d" not in one.members and one.generation > generation


def test_refusals_keep_control_characters_out_of_logs_and_status(caplog):
    members = Membership()
    members.refuse("127.0.0.1", "evil\x1b[2J\nname", 400, "bad\x07 thing")
    (row,) = members.refusals()
    assert row["name"] == "evil?[2J?name" and row["reason"] == "bad? thing"
    assert "\x1b" not in caplog.text and "\x07" not in caplog.text
