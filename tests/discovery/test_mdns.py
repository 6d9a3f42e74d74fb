"""DNS-SD messages (pure): announce, query, answer, cache, hostile packets."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herd.discovery import mdns
from herd.discovery.mdnscache import Cache

ROUTER = mdns.Service(
    mdns.ROUTER_TYPE,
    "herd site",
    "herd-box.local.",
    11435,
    {"fp": "00112233aabbccdd", "path": "/"},
    ("10.1.0.1",),
)


def records_of(wire: bytes) -> dict[int, list]:
    message, _ = mdns.parse(wire)
    out: dict[int, list] = {}
    for rrset in list(message.answer) + list(message.additional):
        out.setdefault(rrset.rdtype, []).append(rrset)
    return out


def test_announcement_has_ptr_srv_txt_a_with_rfc_ttls_and_cache_flush():
    wire = mdns.announcement([ROUTER])
    got = records_of(wire)
    assert got[dns.rdatatype.PTR][0].ttl == 4500
    assert got[dns.rdatatype.SRV][0].ttl == 120
    assert got[dns.rdatatype.TXT][0].ttl == 4500
    assert got[dns.rdatatype.A][0].ttl == 120
    assert got[dns.rdatatype.SRV][0][0].port == 11435
    # Raw class fields: the PTR (shared) is plain IN, unique records flush.
    classes = _raw_classes(wire)
    assert classes == [1, 0x8001, 0x8001, 0x8001]


def test_goodbye_is_the_same_records_with_ttl_zero():
    got = records_of(mdns.announcement([ROUTER], goodbye=True))
    assert {rrset.ttl for sets in got.values() for rrset in sets} == {0}


def test_cache_resolves_a_service_and_forgets_it_one_second_after_goodbye():
    cache = Cache()
    cache.add(mdns.parse(mdns.announcement([ROUTER]))[0], now=100.0)
    (found,) = cache.services(mdns.ROUTER_TYPE, now=101.0)
    assert found.instance == "herd site" and found.port == 11435
    assert found.addresses == ("10.1.0.1",) and found.txt["fp"] == "00112233aabbccdd"
    cache.add(mdns.parse(mdns.announcement([ROUTER], goodbye=True))[0], now=200.0)
    assert cache.services(mdns.ROUTER_TYPE, now=200.5)
    assert cache.services(mdns.ROUTER_TYPE, now=201.1) == []


def test_records_expire_with_their_ttl():
    cache = Cache()
    cache.add(mdns.parse(mdns.announcement([ROUTER]))[0], now=0.0)
    assert cache.services(mdns.ROUTER_TYPE, now=119.0)
    # The SRV (120 s) is gone, so the instance cannot be resolved any more.
    assert cache.services(mdns.ROUTER_TYPE, now=121.0) == []
    assert not cache.refresh_due(mdns.ROUTER_TYPE, now=10.0)
    assert cache.refresh_due(mdns.ROUTER_TYPE, now=4500 * 0.85)


def test_answer_to_a_ptr_query_carries_srv_txt_a_as_additional():
    query, _ = mdns.parse(mdns.query(mdns.ROUTER_TYPE))
    reply = mdns.answer(query, [ROUTER])
    message, _ = mdns.parse(reply)
    assert [r.rdtype for r in message.answer] == [dns.rdatatype.PTR]
    assert {r.rdtype for r in message.additional} == {
        dns.rdatatype.SRV,
        dns.rdatatype.TXT,
        dns.rdatatype.A,
    }
    assert message.flags & dns.flags.AA and message.id == 0


def test_known_answer_suppression():
    cache = Cache()
    cache.add(mdns.parse(mdns.announcement([ROUTER]))[0], now=0.0)
    # The asker holds our PTR with more than half its TTL left: no answer.
    fresh, _ = mdns.parse(mdns.query(mdns.ROUTER_TYPE, cache, now=10.0))
    assert len(fresh.answer) == 1
    assert mdns.answer(fresh, [ROUTER]) is None
    # Less than half left: it is not listed as known, and we answer.
    stale, _ = mdns.parse(mdns.query(mdns.ROUTER_TYPE, cache, now=3000.0))
    assert len(stale.answer) == 0
    assert mdns.answer(stale, [ROUTER]) is not None


def test_known_answer_with_under_half_ttl_does_not_suppress():
    query = dns.message.make_query(mdns.ROUTER_TYPE, "PTR")
    query.flags = dns.flags.Flag(0)
    rrset = mdns.records(ROUTER)["ptr"][0].copy()
    rrset.update_ttl(100)  # < 4500 / 2
    query.answer.append(rrset)
    parsed, _ = mdns.parse(query.to_wire())
    assert mdns.answer(parsed, [ROUTER]) is not None


def test_questions_about_others_get_no_answer():
    query, _ = mdns.parse(mdns.query("_http._tcp.local."))
    assert mdns.answer(query, [ROUTER]) is None
    assert mdns.answer(query, []) is None


def test_legacy_unicast_query_gets_its_id_questions_and_short_ttls():
    query = dns.message.make_query(mdns.ROUTER_TYPE, "PTR", id=4242)
    parsed, _ = mdns.parse(query.to_wire())
    reply = mdns.answer(parsed, [ROUTER], legacy=True)
    message = dns.message.from_wire(reply)  # plain DNS: no mDNS class bits
    assert message.id == 4242 and len(message.question) == 1
    assert max(r.ttl for r in message.answer) <= mdns.LEGACY_TTL


def test_qu_bit_is_reported_and_cleared():
    wire = bytearray(mdns.query(mdns.ROUTER_TYPE))
    struct.pack_into("!H", wire, len(wire) - 2, 0x8001)
    message, unicast = mdns.parse(bytes(wire))
    assert unicast and message.question[0].rdclass == 1


def test_compressed_srv_target_from_other_implementations_is_read():
    # A zeroconf answer: the SRV target and NSEC name are compressed.
    wire = bytes.fromhex(
        "0000840000000005000000000a5f686572642d6e6f6465045f746370056c6f63616c"
        "00000c000100001194000a077a632d6e6f6465c00cc02d0021800100000078001000"
        "0000002caa077a632d6e6f6465c01cc02d0010800100001194001b1a75726c3d6874"
        "74703a2f2f31302e37372e302e323a3131343334c049002f8001000000780005c049"
        "000140c049000180010000007800040a4d0002"
    )
    cache = Cache()
    cache.add(mdns.parse(wire)[0], now=0.0)
    (found,) = cache.services(mdns.NODE_TYPE, now=1.0)
    assert (found.instance, found.host, found.port) == (
        "zc-node",
        "zc-node.local.",
        11434,
    )
    assert found.addresses == ("10.77.0.2",)


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x00" * 11,
        b"\x00\x00\x84\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c",  # self pointer
        b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01a\x00\x00\x01",
        b"\x00" * 10000,
    ],
)
def test_hostile_packets_are_bad_packets_not_crashes(wire):
    with pytest.raises(mdns.BadPacket):
        mdns.parse(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_escape_as_other_errors(data):
    try:
        message, _ = mdns.parse(data)
    except mdns.BadPacket:
        return
    Cache().add(message, 0.0)
    mdns.answer(message, [ROUTER])


def _raw_classes(wire: bytes) -> list[int]:
    counts = struct.unpack_from("!HHHH", wire, 4)
    pos, classes = 12, []
    for _ in range(sum(counts[1:])):
        _, pos = mdns._read_name(wire, pos)
        _, rclass, _, rdlen = struct.unpack_from("!HHIH", wire, pos)
        classes.append(rclass)
        pos += 10 + rdlen
    return classes


DUAL = mdns.Service(
    mdns.ROUTER_TYPE,
    "herd dual",
    "herd-dual.local.",
    11435,
    {},
    ("10.1.0.1", "fd77::1"),
)


def test_ipv6_addresses_are_aaaa_records_asked_for_by_type():
    got = records_of(mdns.announcement([DUAL]))
    assert [rd.address for rd in got[dns.rdatatype.A][0]] == ["10.1.0.1"]
    assert [rd.address for rd in got[dns.rdatatype.AAAA][0]] == ["fd77::1"]
    cache = Cache()
    cache.add(mdns.parse(mdns.announcement([DUAL]))[0], now=1.0)
    (found,) = cache.services(mdns.ROUTER_TYPE, now=2.0)
    assert found.addresses == ("10.1.0.1", "fd77::1")  # IPv4 first
    for qtype, want in (("AAAA", {dns.rdatatype.AAAA}), ("A", {dns.rdatatype.A})):
        question = dns.message.make_query("herd-dual.local.", qtype)
        question.flags = dns.flags.Flag(0)
        reply = mdns.answer(question, [DUAL])
        assert reply is not None
        message, _ = mdns.parse(reply)
        assert {r.rdtype for r in message.answer} == want
