"""POST /fleet/heartbeat: signed heartbeats from `herd node` agents.

Checks run cheapest first and every refusal is a 4xx with one audit line
(`herd.audit` logger) and a row `herd status` shows, never a 500 and never a
registered node: the Host header (the router's DNS-rebinding guard,
herd.router.hostnames: heartbeats skip falcon and its middleware, so the
check is made here), size, source network, signature headers, timestamp
skew, HMAC over the exact body (herd.discovery.fleetkey), nonce not seen
before, JSON (`decode`) and its shape (herd.discovery.heartbeat.parse), then
the manifest's admission rules (`admit`). Heartbeats leave no trace row: they
are not client requests.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import falcon

from herd.digits import decimal
from herd.discovery import fleetkey
from herd.discovery.heartbeat import (
    ADMITTED,
    MAX_BODY,
    NONCE,
    Verdict,
    admit,
    check_source,
    parse,
)
from herd.discovery.membership import Membership
from herd.errors import HerdError
from herd.router.api.body import parse_router_only
from herd.router.hostnames import HostCheck
from herd.router.http.httphead import MAX_LENGTH_DIGITS
from herd.router.http.peer import peer_address
from herd.router.routing.forward import dumps

PATH = "/fleet/heartbeat"
RESEND = "models left out, but this router does not hold that inventory: send all"


class Refused(Exception):
    def __init__(self, status: int, reason: str, name: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.name = status, reason, name


class KeyCache:
    """The fleet keys of `discovery.node_keys`, re-read when the file changes
    (looked at no more than once every `STAT_S` seconds: hundreds of agents
    beat each second)."""

    STAT_S = 1.0

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._stamp: tuple[str, int, int] | None = None
        self._keys: tuple[fleetkey.FleetKey, ...] = ()
        self._monotonic = monotonic
        self._checked: tuple[str | None, float] = (None, float("-inf"))

    def keys(self, path: str | None) -> tuple[fleetkey.FleetKey, ...]:
        if not path:
            raise Refused(403, "discovery.node_keys is not set: no agent can join")
        now = self._monotonic()
        if (
            self._checked[0] == path
            and now - self._checked[1] < self.STAT_S
            and self._keys
        ):
            return self._keys
        self._checked = (None, now)
        try:
            st = os.stat(path)
        except OSError as ex:
            raise Refused(403, f"fleet key {path} unreadable: {ex.strerror}") from ex
        stamp = (path, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._keys = fleetkey.load(path)
            except HerdError as ex:
                raise Refused(403, str(ex)) from ex
            self._stamp = stamp
        self._checked = (path, now)
        return self._keys


class HeartbeatResource:
    """The endpoint; `membership` is shared by all workers (SQLite).

    Called as a plain WSGI app (`__call__`) for POST: the router's app hands
    heartbeats over before falcon's request objects and admission middleware
    (herd.router.app), since hundreds of agents beat every second and none
    of that serves them. `on_post` is the same answer for a falcon app.
    """

    def __init__(self, runtime: Any, membership: Membership):
        self.rt = runtime
        self.membership = membership
        self.keys = KeyCache()
        self.hosts = HostCheck()

    def fingerprints(self, fleet: Any) -> list[str]:
        """Fingerprints of the fleet keys (announced over mDNS), if readable."""
        try:
            return [k.fingerprint for k in self.keys.keys(fleet.discovery.node_keys)]
        except Refused:
            return []

    def __call__(self, env: dict[str, Any], start_response: Any) -> list[bytes]:
        self.rt.ensure_started()
        length = env.get("CONTENT_LENGTH")
        status, data = self.answer(
            peer_address(env.get("REMOTE_ADDR")),
            lambda name: env.get(_WSGI_HEADERS[name]),
            decimal(length, MAX_LENGTH_DIGITS) if length else None,
            env["wsgi.input"].read,
            env.get("HTTP_HOST"),
        )
        start_response(
            _STATUS_LINES.get(status) or f"{status} {HTTPStatus(status).phrase}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def on_post(self, req: Any, resp: Any) -> None:
        req.context.deferred = True  # no trace row: not a client request
        status, data = self.answer(
            req.context.peer,
            req.get_header,
            req.content_length,
            req.bounded_stream.read,
            req.env.get("HTTP_HOST"),
        )
        resp.status = status
        resp.content_type = falcon.MEDIA_JSON
        resp.data = data

    def answer(
        self,
        address: str,
        header: Callable[[str], str | None],
        length: int | None,
        read: Callable[[int], bytes],
        host: str | None = None,
    ) -> tuple[int, bytes]:
        """Status and JSON body for one heartbeat from `address` (`host`: the
        request's Host header)."""
        fleet = self.rt.source.static().fleet
        try:
            verdict, name = self._handle(fleet, address, header, length, read, host)
        except Refused as ex:
            self.membership.refuse(address, ex.name, ex.status, ex.reason)
            return ex.status, dumps({"error": f"heartbeat refused: {ex.reason}"})
        except HerdError as ex:  # the body could not be read (timeout, framing)
            self.membership.refuse(address, None, ex.status, ex.message)
            return ex.status, dumps({"error": f"heartbeat refused: {ex.message}"})
        if verdict.reason == ADMITTED:
            return 200, _admitted_body(name)
        if verdict.reason == RESEND:
            return 200, dumps(
                {"admitted": False, "name": name, "reason": RESEND, "resend": True}
            )
        return 200, dumps(
            {"admitted": verdict.admitted, "name": name, "reason": verdict.reason}
        )

    def _handle(
        self,
        fleet: Any,
        address: str,
        header: Callable[[str], str | None],
        length: int | None,
        read: Callable[[int], bytes],
        host: str | None,
    ) -> tuple[Verdict, str]:
        if not self.hosts.allows(fleet, host):
            raise Refused(
                421,
                f"Host {host[:100]!r} is not a name of this router "
                "(use its address or a name in router.hostnames)",
            )
        if length is not None and length > MAX_BODY:
            raise Refused(413, f"body of {length} bytes is over {MAX_BODY}")
        body = read(MAX_BODY + 1 if length is None else length)
        if len(body) > MAX_BODY:
            raise Refused(413, f"body is over {MAX_BODY} bytes")
        refused = check_source(fleet, address)
        if refused is not None:
            raise Refused(refused.status, refused.reason)
        keys = self.keys.keys(fleet.discovery.node_keys)
        timestamp = header(fleetkey.HEADER_TIMESTAMP) or ""
        nonce = header(fleetkey.HEADER_NONCE) or ""
        signature = header(fleetkey.HEADER_SIGNATURE) or ""
        if not (timestamp and nonce and signature):
            raise Refused(401, "unsigned (X-Herd-Timestamp/Nonce/Signature missing)")
        stamp = decimal(timestamp, 12)
        if stamp is None:
            raise Refused(400, "X-Herd-Timestamp must be Unix seconds")
        skew = fleet.discovery.max_clock_skew_s
        drift = self.rt.clock() - stamp
        if abs(drift) > skew:
            raise Refused(401, f"stale: timestamp {drift:+.0f} s from router clock")
        if not NONCE.match(nonce):
            raise Refused(400, "X-Herd-Nonce must be 16-64 lowercase hex digits")
        if fleetkey.verify(keys, timestamp, nonce, body, signature) is None:
            raise Refused(401, "bad signature (not signed with the fleet key)")
        doc = None
        try:
            doc = decode(body)
            hb = parse(doc)
        except HerdError as ex:
            raise Refused(ex.status, ex.message, _name(doc)) from ex
        members = self.membership
        members.check(fleet.discovery.heartbeat_timeout_s)
        if hb.partial and not members.holds(hb, address):
            # Not recorded: this worker does not hold that inventory.
            return Verdict(False, RESEND), hb.name
        verdict = admit(fleet, hb, address, members.holder, members.url_holder)
        if not verdict.admitted:
            raise Refused(verdict.status, verdict.reason, hb.name)
        # The nonce is spent in the same transaction that records the beat.
        if hb.goodbye:
            if (
                members.leave(hb.name, address, "goodbye", nonce=nonce, skew_s=skew)
                is None
            ):
                raise Refused(409, "replayed (nonce already used)", hb.name)
            return Verdict(False, "goodbye: left the fleet"), hb.name
        via = str(doc.get("via") or "agent")[:16]
        recorded = members.beat(
            hb, address, verdict.static_name, via, raw=body, nonce=nonce, skew_s=skew
        )
        if recorded is None:
            raise Refused(409, "replayed (nonce already used)", hb.name)
        return verdict, hb.name


_STATUS_LINES = {200: "200 OK"}
_WSGI_HEADERS = {
    name: "HTTP_" + name.upper().replace("-", "_")
    for name in (
        fleetkey.HEADER_TIMESTAMP,
        fleetkey.HEADER_NONCE,
        fleetkey.HEADER_SIGNATURE,
    )
}


def decode(body: bytes) -> Any:
    """A heartbeat's JSON: only the router reads it, so keys are compared
    exactly (see herd.router.api.body.parse_router_only)."""
    return parse_router_only(body, "heartbeat")


@functools.lru_cache(maxsize=8192)
def _admitted_body(name: str) -> bytes:
    """The usual answer, made once per node (names are validated: no escaping)."""
    return dumps({"admitted": True, "name": name, "reason": ADMITTED})


def _name(doc: Any) -> str | None:
    name = doc.get("name") if isinstance(doc, dict) else None
    return name[:64] if isinstance(name, str) else None
