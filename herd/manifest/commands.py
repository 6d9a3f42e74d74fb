"""CLI subcommands of herd.manifest (registered by herd.cli)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add validate/plan/apply/history/rollback/show."""
