"""CLI subcommands of herd.router (registered by herd.cli)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands to the `herd` parser."""
