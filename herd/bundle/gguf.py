"""The GGUF container header: a bounded reader (for scanning) and a tiny writer.

The reader walks magic, version, counts, the metadata key/values and the tensor
infos without ever trusting a length: every count and string length is checked
against fixed limits and against the bytes actually left in the file, so a
hostile header cannot make herd allocate gigabytes or loop for hours. Layout
facts: the GGUF file format (magic, version, tensor and metadata counts).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from herd.errors import BundleError

MAGIC = b"GGUF"
MAX_TENSORS = 1_000_000
MAX_KV = 100_000
MAX_STRING = 16 << 20
MAX_ARRAY = 64 << 20
MAX_DIMS = 4
#: Keep at most this many bytes of metadata values in memory (arrays skipped).
MAX_KEPT_VALUE = 4096

# value type -> (struct format, size)
_SCALARS = {
    0: ("B", 1),
    1: ("b", 1),
    2: ("H", 2),
    3: ("h", 2),
    4: ("I", 4),
    5: ("i", 4),
    6: ("f", 4),
    7: ("?", 1),
    10: ("Q", 8),
    11: ("q", 8),
    12: ("d", 8),
}
STRING, ARRAY = 8, 9

FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


@dataclass(frozen=True)
class GGUFInfo:
    """What the header says: enough to check a blob and to describe a model."""

    version: int
    tensor_count: int
    kv_count: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    parameter_count: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def file_type(self) -> str:
        value = self.metadata.get("general.file_type")
        if isinstance(value, int):
            return FILE_TYPES.get(value, str(value))
        return ""


class _Reader:
    """Reads little-endian fields, never past `limit` bytes of the file."""

    def __init__(self, fh: BinaryIO, limit: int, name: str):
        self.fh = fh
        self.left = limit
        self.name = name

    def bad(self, why: str) -> BundleError:
        return BundleError(f"{self.name}: not a sane GGUF file: {why}")

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise self.bad("header runs past the end of the file")
        data = self.fh.read(n)
        if len(data) != n:
            raise self.bad("header runs past the end of the file")
        self.left -= n
        return data

    def skip(self, n: int) -> None:
        if n > self.left:
            raise self.bad("header runs past the end of the file")
        self.fh.seek(n, 1)
        self.left -= n

    def scalar(self, fmt: str, size: int) -> Any:
        return struct.unpack("<" + fmt, self.take(size))[0]

    def u32(self) -> int:
        return self.scalar("I", 4)

    def u64(self) -> int:
        return self.scalar("Q", 8)

    def string(self, keep: bool = True) -> str | None:
        n = self.u64()
        if n > MAX_STRING:
            raise self.bad(f"string of {n} bytes (limit {MAX_STRING})")
        if not keep or n > MAX_KEPT_VALUE:
            self.skip(n)
            return None
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as ex:
            raise self.bad(f"string is not UTF-8 ({ex.reason})") from ex

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(*_SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY and depth == 0:
            etype = self.u32()
            count = self.u64()
            if count > MAX_ARRAY:
                raise self.bad(f"array of {count} elements (limit {MAX_ARRAY})")
            if etype in _SCALARS:
                self.skip(count * _SCALARS[etype][1])
            elif etype in (STRING, ARRAY):
                for _ in range(count):
                    self.value(etype, depth + 1)
            else:
                raise self.bad(f"unknown array element type {etype}")
            return None
        raise self.bad(f"unknown metadata value type {vtype}")


def read_header(fh: BinaryIO, size: int, name: str = "file") -> GGUFInfo:
    """Parse and sanity-check a GGUF header from the start of `fh` (`size` bytes).

    Raises `BundleError` naming `name` on anything implausible.
    """
    r = _Reader(fh, size, name)
    if size < 4:
        raise r.bad("file shorter than the magic")
    magic = r.take(4)
    if magic != MAGIC:
        raise r.bad(f"magic is {magic!r}, expected b'GGUF'")
    version = r.u32()
    if version not in (2, 3):
        raise r.bad(f"version {version} (herd accepts 2 and 3)")
    tensor_count, kv_count = r.u64(), r.u64()
    if tensor_count > MAX_TENSORS:
        raise r.bad(f"tensor count {tensor_count} (limit {MAX_TENSORS})")
    if kv_count > MAX_KV:
        raise r.bad(f"metadata count {kv_count} (limit {MAX_KV})")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = r.string()
        if key is None:
            raise r.bad("metadata key longer than 4096 bytes")
        metadata[key] = r.value(r.u32())
    params = 0
    for _ in range(tensor_count):
        r.string(keep=False)
        n_dims = r.u32()
        if n_dims > MAX_DIMS:
            raise r.bad(f"tensor with {n_dims} dimensions (limit {MAX_DIMS})")
        count = 1
        for _ in range(n_dims):
            count *= r.u64()
        params += count
        r.skip(4 + 8)  # ggml type, data offset
    return GGUFInfo(version, tensor_count, kv_count, metadata, params)


def human_number(n: int) -> str:
    """Parameter counts the way Ollama prints them (`format.HumanNumber`)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(n)


# -- writing (the example bundle and tests build small, valid files) ---------


def _pack_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _pack_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return struct.pack("<I?", 7, value)
    if isinstance(value, int):
        return (
            struct.pack("<Iq", 11, value)
            if value < 0
            else struct.pack("<IQ", 10, value)
        )
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    if isinstance(value, str):
        return struct.pack("<I", STRING) + _pack_string(value)
    if isinstance(value, list | tuple):
        body = b"".join(_pack_string(str(v)) for v in value)
        return struct.pack("<IIQ", ARRAY, STRING, len(value)) + body
    raise TypeError(f"cannot encode {type(value).__name__} in GGUF metadata")


def _tensor_bytes(shape: tuple[int, ...]) -> int:
    nbytes = 4
    for d in shape:
        nbytes *= d
    return nbytes


def encode_header(
    metadata: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]]
) -> bytes:
    """The header of a little-endian GGUF v3 file with F32 tensors, padded to 32.

    Integer metadata is written as uint32 when it fits (as `general.file_type`
    is in real files), else uint64. Tensor data (not included) follows, each
    tensor aligned to 32 bytes.
    """
    out = [MAGIC, struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, value in metadata.items():
        out.append(_pack_string(key))
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value < 2**32
        ):
            out.append(struct.pack("<II", 4, value))
        else:
            out.append(_pack_value(value))
    offset = 0
    for name, shape in tensors.items():
        out.append(_pack_string(name) + struct.pack("<I", len(shape)))
        out.append(struct.pack(f"<{len(shape)}Q", *shape))
        out.append(struct.pack("<IQ", 0, offset))
        offset += (_tensor_bytes(shape) + 31) // 32 * 32
    head = b"".join(out)
    return head + b"\0" * (-len(head) % 32)


def encode(
    metadata: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]]
) -> bytes:
    """A complete small GGUF file; tensor data is deterministic, not random."""
    data = [encode_header(metadata, tensors)]
    for i, shape in enumerate(tensors.values()):
        nbytes = _tensor_bytes(shape)
        floats = nbytes // 4
        data.append(
            struct.pack(f"<{floats}f", *((j % 7 + i) / 8 for j in range(floats)))
        )
        data.append(b"\0" * (-nbytes % 32))
    return b"".join(data)
