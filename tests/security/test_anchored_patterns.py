"""Every pattern that decides whether a name, digest or path from outside is
acceptable matches the whole string. `$` also matches before a final newline,
so `re.match(r"^[a-z]+$", "gpu\\n")` accepts a newline into a name (then into
log lines and file names); these patterns end in `\\Z` instead. The table
checks each one with a value it accepts and the same value plus a newline,
and a scan of the package keeps new ones from ending in a bare `$`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from herd.bundle import kept, layout, ollama
from herd.discovery import heartbeat
from herd.health import scrub
from herd.manifest import loader
from herd.router.api import images, registry
from herd.router.http import multipart
from herd.sim import store as sim_store

HEX = "a" * 64

ACCEPTED = [
    (loader._PLAIN_KEY, "nodes"),
    (heartbeat.NAME, "gpu-a"),
    (heartbeat.NONCE, "0123456789abcdef"),
    (heartbeat.INVENTORY, "0123456789abcdef"),
    (layout.BLOB_RE, f"blobs/sha256-{HEX}"),
    (layout.PART_RE, f"blobs/sha256-{HEX}.part001"),
    (kept.NAME_RE, "site-2026-11"),
    (ollama.NAME_RE, "llama3.2:3b"),
    (ollama.DIGEST_RE, f"sha256:{HEX}"),
    (sim_store._HOST_RE, "registry.ollama.ai"),
    (sim_store._NS_RE, "library"),
    (sim_store._PART_RE, "llama3.2"),
    (multipart._BOUNDARY, "----boundary42"),
    (images._SIZE, "512x512"),
    (registry.DIGEST_RE, f"sha256:{HEX}"),
    (registry.NAME_PART_RE, "llama3.2"),
    (scrub.BLOB, f"sha256-{HEX}"),
]


@pytest.mark.parametrize(("pattern", "value"), ACCEPTED, ids=lambda x: str(x)[:40])
def test_a_final_newline_is_refused(pattern, value):
    assert pattern.match(value)
    assert not pattern.match(value + "\n")


def test_no_validation_pattern_ends_in_a_bare_dollar():
    package = Path(heartbeat.__file__).resolve().parents[1]
    offenders = []
    compiled = re.compile(r're\.(?:compile|match|fullmatch)\(\s*r?f?"([^"]*)"([^)]*)')
    for path in sorted(package.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for found in compiled.finditer(line):
                text, flags = found.groups()
                # (With re.S a final `.*` takes the newline itself.)
                if text.endswith("$") and "re.S" not in flags:
                    offenders.append(f"{path.relative_to(package)}:{number}")
    assert offenders == []
