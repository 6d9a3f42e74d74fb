"""Manifest loading (placeholder while the real loader is written)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from herd.manifest.model import Fleet, build_fleet


@dataclass(frozen=True)
class Problem:
    line: int
    path: str
    message: str

    def render(self, source: str) -> str:
        return f"{source}:{self.line}: {self.path}: {self.message}"


def load_bytes(data: bytes, source: str = "<manifest>", base_dir: str | None = None) -> Fleet:
    return build_fleet(yaml.safe_load(data))


def load_file(path: str) -> Fleet:
    return load_bytes(Path(path).read_bytes(), str(path), str(Path(path).parent))
