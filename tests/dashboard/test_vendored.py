"""The vendored chart library is what VENDORED.md says it is: the recorded
version, unchanged bytes (SHA256SUMS, written by refresh.sh), its license."""

from __future__ import annotations

import hashlib
import os
import re

from herd.dashboard.page import ASSETS, STATIC

VENDOR = STATIC / "vendor"


def test_vendored_files_match_their_recorded_hashes():
    sums = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert set(sums) == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    # Every vendored file the page loads is one the sums cover.
    assert {a.removeprefix("vendor/") for a in ASSETS if a.startswith("vendor/")} <= (
        set(sums)
    )


def test_version_and_license_are_recorded():
    notes = (VENDOR / "VENDORED.md").read_text()
    script = (VENDOR / "refresh.sh").read_text()
    banner = (VENDOR / "uPlot.iife.min.js").read_text()[:200]
    version = re.search(r"uPlot \(v([0-9.]+)\)", banner).group(1)
    assert f"| version  | {version} |" in notes
    assert f"PINNED_VERSION={version}" in script
    pinned = re.search(r"PINNED_SHA256=([0-9a-f]{64})", script).group(1)
    assert pinned in notes
    assert "MIT License" in (VENDOR / "uPlot.LICENSE").read_text()
    assert os.access(VENDOR / "refresh.sh", os.X_OK)
