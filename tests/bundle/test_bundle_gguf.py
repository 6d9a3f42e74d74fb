"""The GGUF header reader: real files round-trip, hostile headers are refused."""

from __future__ import annotations

import io
import struct

import pytest

from herd.bundle import gguf
from herd.errors import BundleError
from tests.bundle.bundle_helpers import tiny_gguf


def read(data: bytes) -> gguf.GGUFInfo:
    return gguf.read_header(io.BytesIO(data), len(data), "t.gguf")


def test_round_trip_reads_metadata_and_counts_parameters():
    info = read(tiny_gguf(arch="qwen2", width=8, seed=1))
    assert info.version == 3
    assert info.tensor_count == 2
    assert info.architecture == "qwen2"
    assert info.file_type == "F16"
    assert info.parameter_count == 8 * 4 + 8 * 5


def test_arrays_and_long_strings_are_skipped_not_kept():
    data = gguf.encode({"tokenizer.ggml.tokens": ["a"] * 1000, "x": "y" * 5000}, {})
    info = read(data)
    assert info.metadata["tokenizer.ggml.tokens"] is None
    assert info.metadata["x"] is None


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"PK\x03\x04" + b"\0" * 60, "magic"),
        (b"GGUF" + struct.pack("<IQQ", 7, 0, 0), "version 7"),
        (b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0), "tensor count"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 40), "metadata count"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 50), "string"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 5), "past the end"),
        (b"GG", "shorter"),
    ],
)
def test_hostile_headers_are_refused(data, reason):
    with pytest.raises(BundleError, match=reason):
        read(data)


def test_absurd_array_count_is_refused_without_allocating():
    bad = (
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + gguf._pack_string("a")
        + struct.pack("<IIQ", 9, 4, 1 << 60)
    )
    with pytest.raises(BundleError, match="array of"):
        read(bad)


def test_too_many_dimensions_is_refused():
    bad = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + gguf._pack_string("w")
    bad += struct.pack("<I", 9) + b"\0" * 100
    with pytest.raises(BundleError, match="9 dimensions"):
        read(bad)


def test_human_number_matches_ollama_style():
    assert gguf.human_number(3_200_000_000) == "3.2B"
    assert gguf.human_number(7_000_000_000) == "7B"
    assert gguf.human_number(135_000_000) == "135M"
    assert gguf.human_number(72) == "72"
