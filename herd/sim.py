"""`herd sim`: a simulated Ollama node (placeholder; see issue "router")."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `herd sim`."""
