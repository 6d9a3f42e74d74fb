"""Every process-level setting, declared once: name, type, default, env var, help.

CLI flags and the settings table in README.md are derived from `SETTINGS`
(tests/test_settings.py fails when the README drifts). The fleet's own
configuration lives in the manifest, not here: these are only the knobs a
process needs before it can find the manifest.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def default_state_dir() -> str:
    """/var/lib/herd as root, else $XDG_STATE_HOME/herd (DESIGN.md)."""
    if os.geteuid() == 0:
        return "/var/lib/herd"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "herd")


@dataclass(frozen=True)
class Setting:
    name: str
    flag: str
    env: str
    help: str
    default: Callable[[], Any]
    type: Callable[[str], Any] = str

    def resolve(self, cli_value: Any = None) -> Any:
        """CLI flag beats environment beats default."""
        if cli_value is not None:
            return cli_value
        if os.environ.get(self.env):
            return self.type(os.environ[self.env])
        return self.default()

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            self.flag,
            dest=self.name,
            type=self.type,
            default=None,
            metavar=self.name.upper().replace("_", "-").split("-")[-1],
            help=f"{self.help} (env {self.env})",
        )


STATE_DIR = Setting(
    name="state_dir",
    flag="--state-dir",
    env="HERD_STATE_DIR",
    help="where herd keeps its state: revisions, audit log, traces, bundle store "
    "(default /var/lib/herd as root, else $XDG_STATE_HOME/herd)",
    default=default_state_dir,
)

SETTINGS: tuple[Setting, ...] = (STATE_DIR,)


def docs_table() -> str:
    """The settings table as Markdown, as it must appear in README.md."""
    rows = ["| flag | env | meaning |", "|---|---|---|"]
    rows += [f"| `{s.flag}` | `{s.env}` | {s.help} |" for s in SETTINGS]
    return "\n".join(rows)
