"""A real, deterministic PNG for `herd sim`'s image generation (zlib + struct only).

The picture is a smooth colour field whose palette comes from a seed (the
model, prompt, size and seed of the request), so the same request always
gives the same bytes and any image viewer opens it.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def render(width: int, height: int, seed: str) -> bytes:
    """An RGB PNG of `width` x `height` pixels drawn from `seed`."""
    key = hashlib.sha256(seed.encode("utf-8")).digest()
    r0, g0, b0 = key[:3]
    base = bytearray()
    for x in range(width):
        fx = x * 255 // max(1, width - 1)
        base += bytes(((r0 + fx) & 0xFF, (g0 + fx // 2) & 0xFF, (b0 - fx) & 0xFF))
    # Row y is the first row with every byte shifted by y's share of 255:
    # one bytes.translate per row instead of a loop over its pixels.
    rows = []
    for y in range(height):
        fy = y * 255 // max(1, height - 1)
        shift = bytes((i + fy) & 0xFF for i in range(256))
        rows.append(b"\x00" + bytes(base).translate(shift))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + _chunk(b"IEND", b"")
    )
