"""The `herd` command: a thin shell over the library.

Each subcommand parses, calls one library function, prints. Library errors
(`HerdError`) become one clean line on stderr and exit 1, never a traceback.
Feature packages add their own subcommands through a `register(sub, common)`
function (see `COMMAND_MODULES`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any

from herd import __version__
from herd.errors import HerdError, ManifestError
from herd.settings import COMMON

#: Modules that contribute subcommands. Each has `register(sub, common)`.
COMMAND_MODULES = (
    "herd.manifest.commands",
    "herd.router.commands",
    "herd.sim",
    "herd.bundle.commands",
    "herd.demo",
    "herd.node.commands",
    "herd.ops.commands",
    "herd.health.commands",
    "herd.wheelhouse",
)

#: The module that registers each subcommand, so that `herd sim` or `herd serve`
#: imports only its own module, not every command's dependencies (jsonschema,
#: the state store, ...): tests and scripts start hundreds of these processes.
#: A command missing here still works (the full parser is built); tests/test_cli.py
#: checks that the table matches what the modules register.
COMMAND_OWNERS = {
    **dict.fromkeys(
        ("validate", "plan", "apply", "history", "show", "rollback"),
        "herd.manifest.commands",
    ),
    "serve": "herd.router.commands",
    "status": "herd.router.commands",
    "sim": "herd.sim",
    "bundle": "herd.bundle.commands",
    "demo": "herd.demo",
    "keygen": "herd.node.commands",
    "node": "herd.node.commands",
    "audit": "herd.ops.commands",
    "traces": "herd.ops.commands",
    "health": "herd.health.commands",
    "wheelhouse": "herd.wheelhouse",
}

EPILOG = """\
examples:
  herd demo                             try it: simulated nodes + router, Ctrl-C stops
  herd validate etc/fleet.yaml          check a manifest, one line per error
  herd plan etc/fleet.yaml              what would change
  herd apply etc/fleet.yaml --yes       record it; the router reloads by itself
  herd serve                            run the router on router.listen
  herd sim --port 11434                 a simulated Ollama node for demos
  herd bundle import /media/usb/site-2026-11
  herd audit verify                     check the audit log's hash chain
  herd traces stats --since 24h         requests per model, node, group and tag

every command takes --state-dir DIR (env HERD_STATE_DIR); see `herd CMD --help`.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in epilogs laid out as written."""


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand takes (declared once, in herd.settings)."""
    common = argparse.ArgumentParser(add_help=False)
    for setting in COMMON:
        setting.add_to(common)
    return common


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    help: str,
    examples: str,
    parents: Sequence[argparse.ArgumentParser] = (),
    json_flag: bool = False,
) -> argparse.ArgumentParser:
    """Add one subcommand whose help ends with its examples."""
    parser = sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="examples:\n" + examples.rstrip() + "\n",
        formatter_class=HelpFormatter,
        parents=list(parents),
    )
    if json_flag:
        parser.add_argument(
            "--json", action="store_true", help="print machine-readable JSON"
        )
    parser.set_defaults(func=func)
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `command` (a name in COMMAND_OWNERS), one that knows
    only the subcommands of the module owning it (same parsing, same help)."""
    owner = COMMAND_OWNERS.get(command or "")
    parser = argparse.ArgumentParser(
        prog="herd",
        description="herd: a private, declarative inference fleet for air-gapped "
        "sites.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"herd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_parser()
    for module_name in (owner,) if owner else COMMAND_MODULES:
        importlib.import_module(module_name).register(sub, common)
    return parser


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `herd CMD ...` needs only CMD's module; `herd --help` needs them all.
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ManifestError as ex:
        print(str(ex), file=sys.stderr)  # already FILE:LINE: path: message lines
        return 1
    except HerdError as ex:
        print(f"herd {args.command}: {ex}", file=sys.stderr)
        return 1
    except sqlite3.Error as ex:  # a state store problem not already explained
        print(f"herd {args.command}: state store error: {ex}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"herd {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
