"""The fleet key: a shared secret that signs node heartbeats (HMAC-SHA256).

`herd keygen` writes one random 32-byte key, hex encoded, to a file of mode
0600; the manifest names that file in `discovery.node_keys` and each node
agent reads a copy. A key file may hold several keys, one per line, so a new
key can be rolled out before the old one is retired. The fingerprint (first
16 hex digits of the key's SHA-256) identifies a key in logs, status and the
router's mDNS announcement without revealing it.

A signature covers the exact request body together with a timestamp and a
nonce, so a captured heartbeat cannot be replayed or altered.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import HerdError

KEY_BYTES = 32
#: Domain separation: a heartbeat MAC can never be mistaken for another MAC.
CONTEXT = b"herd-heartbeat-v1\n"
HEADER_TIMESTAMP = "X-Herd-Timestamp"
HEADER_NONCE = "X-Herd-Nonce"
HEADER_SIGNATURE = "X-Herd-Signature"
SCHEME = "hmac-sha256="
DEFAULT_PATH = "/etc/herd/fleet.key"


class FleetKeyError(HerdError):
    """A key file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class FleetKey:
    secret: bytes

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.secret).hexdigest()[:16]


def generate() -> FleetKey:
    return FleetKey(secrets.token_bytes(KEY_BYTES))


def write(path: str | os.PathLike[str], key: FleetKey, *, force: bool = False) -> Path:
    """Write `key` to a new file of mode 0600 (never over an existing one unless
    `force`), creating the directory (0700) if needed."""
    target = Path(path)
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        fd = os.open(target, flags, 0o600)
    except FileExistsError as ex:
        raise FleetKeyError(f"{target} exists; pass --force to replace it") from ex
    except OSError as ex:
        raise FleetKeyError(f"cannot write {target}: {ex.strerror or ex}") from ex
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(key.secret.hex() + "\n")
    return target


def parse(text: str, origin: str) -> tuple[FleetKey, ...]:
    """Keys from a key file's text: hex lines, `#` comments and blanks ignored."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            secret = bytes.fromhex(line)
        except ValueError as ex:
            raise FleetKeyError(f"{origin}:{number}: not a hex fleet key") from ex
        if len(secret) < 16:
            raise FleetKeyError(f"{origin}:{number}: key too short (< 16 bytes)")
        keys.append(FleetKey(secret))
    if not keys:
        raise FleetKeyError(f"{origin}: no key in the file (create one: herd keygen)")
    return tuple(keys)


def load(path: str | os.PathLike[str]) -> tuple[FleetKey, ...]:
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as ex:
        reason = getattr(ex, "strerror", None) or str(ex)
        raise FleetKeyError(f"cannot read fleet key {path}: {reason}") from ex
    return parse(text, str(path))


def mac(key: FleetKey, timestamp: str, nonce: str, body: bytes) -> str:
    """HMAC-SHA256 (RFC 2104) of the context, timestamp, nonce and body."""
    inner, outer = _pads(key.secret)
    inner = inner.copy()
    inner.update(CONTEXT + timestamp.encode() + b"\n" + nonce.encode() + b"\n")
    inner.update(body)
    outer = outer.copy()
    outer.update(inner.digest())
    return SCHEME + outer.hexdigest()


@functools.lru_cache(maxsize=16)
def _pads(secret: bytes) -> tuple[Any, Any]:
    """SHA-256 states that have taken the key's inner and outer pads: each MAC
    then starts from copies (half the cost of `hmac.digest`, which sets the
    key up anew every call)."""
    if len(secret) > _BLOCK:
        secret = hashlib.sha256(secret).digest()
    secret = secret.ljust(_BLOCK, b"\0")
    return (
        hashlib.sha256(secret.translate(_IPAD)),
        hashlib.sha256(secret.translate(_OPAD)),
    )


_BLOCK = 64  # SHA-256's block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def sign(key: FleetKey, body: bytes, now: float) -> dict[str, str]:
    """The headers that make `body` a signed heartbeat."""
    timestamp, nonce = str(int(now)), secrets.token_hex(16)
    return {
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: mac(key, timestamp, nonce, body),
    }


def verify(
    keys: Sequence[FleetKey], timestamp: str, nonce: str, body: bytes, signature: str
) -> FleetKey | None:
    """The key that made `signature`, or None (constant-time comparisons)."""
    found = None
    for key in keys:
        if hmac.compare_digest(mac(key, timestamp, nonce, body), signature):
            found = key
    return found
