"""CLI subcommands of herd.bundle (registered by herd.cli): a thin shell.

`herd bundle create / sign` run on the connected side; `verify / import /
list / rm` on the air-gapped side. Each parses, calls one library function,
prints; errors are `BundleError`s that herd.cli prints as one line.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from herd.bundle import peer, signature
from herd.bundle import policy as policy_mod
from herd.bundle.catalog import Catalog, inventory, render_table
from herd.bundle.create import (
    DEFAULT_SPLIT,
    GGUFSource,
    ScanAttestation,
    create_bundle,
    parse_size,
    read_params,
)
from herd.bundle.importer import import_bundle
from herd.bundle.progress import Progress, human_bytes
from herd.bundle.removal import bundle_store, plan_removal, remove_bundle
from herd.bundle.verify import verify
from herd.errors import BundleError
from herd.settings import STATE_DIR
from herd.store import Store


class IntermixedParser(argparse.ArgumentParser):
    """Options may sit between positionals: `create OUT --from-ollama DIR MODEL...`.

    argparse binds all positionals at their first run, so a MODEL after an
    option would be "unrecognized"; the intermixed parse collects options first.
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        if self._intermixing:  # the intermixed parse calls back in here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _split_size(text: str) -> int | None:
    try:
        return parse_size(text)
    except ValueError as ex:
        raise argparse.ArgumentTypeError(str(ex)) from ex


def _print(args: argparse.Namespace, value: Any, text: str) -> None:
    if getattr(args, "json", False):
        json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    elif text:
        print(text)


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(STATE_DIR.resolve(args.state_dir))


def _bar_factory(args: argparse.Namespace, bars: list[Progress]):  # noqa: ANN202
    """A `progress(total)` callback factory: a bar on a TTY unless --json."""

    def start(total: int):  # noqa: ANN202 - returns the bar's advance callback
        bar = Progress(total, enabled=False if args.json else None)
        bars.append(bar)
        return bar.advance

    return start


def _policy(args: argparse.Namespace) -> policy_mod.Policy:
    return policy_mod.resolve(
        _state_dir(args), manifest=args.manifest, trusted_signers=args.trusted_signers
    )


def _text(value: str | None) -> str | None:
    return Path(value).read_text(encoding="utf-8") if value else None


def _os_errors(func):  # noqa: ANN001, ANN202 - a decorator for the commands below
    """File-system errors become one clean line (a BundleError), not a traceback."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except OSError as ex:
            raise BundleError(f"{ex.filename or ''}: {ex.strerror or ex}") from ex

    return run


@_os_errors
def cmd_create(args: argparse.Namespace) -> int:
    ggufs: tuple[GGUFSource, ...] = ()
    if args.from_gguf:
        if not args.name:
            raise BundleError("--from-gguf needs --name NAME:TAG")
        ggufs = (
            GGUFSource(
                Path(args.from_gguf),
                args.name,
                template=_text(args.template),
                params=read_params(args.params),
                system=_text(args.system),
            ),
        )
    attestation = None
    if args.scan_report:
        if not args.scan_verdict:
            raise BundleError("--scan-report needs --scan-verdict (e.g. clean)")
        attestation = ScanAttestation(
            Path(args.scan_report),
            args.scan_verdict,
            tool=args.scan_tool,
            version=args.scan_version or "",
        )
    out = create_bundle(
        Path(args.out_dir),
        name=args.bundle_name,
        ollama_store=Path(args.from_ollama).expanduser() if args.from_ollama else None,
        ollama_models=tuple(args.models),
        ggufs=ggufs,
        split_size=args.split_size,
        attestation=attestation,
        scan_command=args.scan_command,
    )
    _print(
        args,
        {"bundle": str(out)},
        f"wrote {out} (sign it: herd bundle sign {out} --key KEY)",
    )
    return 0


@_os_errors
def cmd_sign(args: argparse.Namespace) -> int:
    sig = signature.sign(Path(args.dir), Path(args.key).expanduser())
    _print(args, {"signature": str(sig)}, f"signed: {sig}")
    return 0


@_os_errors
def cmd_verify(args: argparse.Namespace) -> int:
    pol = _policy(args)
    bars: list[Progress] = []
    try:
        checked = verify(Path(args.dir), pol, progress=_bar_factory(args, bars))
    finally:
        for bar in bars:
            bar.finish()
    value = {
        "bundle": checked.doc.name,
        "ok": True,
        "signer": checked.signer,
        "models": [m.name for m in checked.models],
        "bytes": checked.blob_bytes,
        "scan": checked.doc.scan.verdict if checked.doc.scan else None,
    }
    _print(
        args,
        value,
        f"ok: bundle {checked.doc.name} signed by {checked.signer}, "
        f"{len(checked.models)} model(s), {human_bytes(checked.blob_bytes)} verified",
    )
    return 0


@_os_errors
def cmd_import(args: argparse.Namespace) -> int:
    state = Store(_state_dir(args))
    try:
        pol = _policy(args)
    except BundleError as ex:  # e.g. no trusted signers: a refusal, audited
        state.audit("bundle.refused", {"source": str(args.dir), "reason": str(ex)})
        state.close()
        raise
    bars: list[Progress] = []
    start = _bar_factory(args, bars)
    root = Path(args.dir)
    try:
        if args.from_peer:
            root = _from_peer(args, pol, state, start)
        result = import_bundle(
            root,
            pol,
            state,
            dry_run=args.dry_run,
            ollama_models=Path(args.ollama_models) if args.ollama_models else None,
            progress=start,
        )
    except BundleError:
        if args.from_peer:  # refused: what the peer sent is not kept
            peer.discard(root)
        raise
    finally:
        for bar in bars:
            bar.finish()
        state.close()
    if args.from_peer and not args.dry_run:
        peer.discard(root)
    verb = "would import" if result.dry_run else "imported"
    lines = [
        f"{verb} bundle {result.bundle} (signed by {result.signer})",
        f"  store: {result.store}",
        f"  models: {', '.join(result.models)}",
        f"  blobs: {len(result.copied)} new ({human_bytes(result.bytes_to_copy)} to "
        f"copy), {len(result.skipped)} already in the store",
    ]
    if result.installed:
        lines.append(
            f"  installed into {result.ollama_models}: {', '.join(result.installed)}"
        )
    _print(args, result.as_dict(), "\n".join(lines))
    return 0


def _from_peer(
    args: argparse.Namespace, pol: policy_mod.Policy, state: Store, start: Any
) -> Path:
    """Fetch bundle `args.dir` (a name) from the peer router into staging."""
    staging = peer.staging_dir(_state_dir(args), args.dir)
    try:
        return peer.fetch_bundle(
            peer.Peer(args.from_peer), args.dir, staging, pol, start
        )
    except BundleError as ex:
        source = f"{args.from_peer} bundle {args.dir}"
        state.audit("bundle.refused", {"source": source, "reason": str(ex)})
        raise


@_os_errors
def cmd_list(args: argparse.Namespace) -> int:
    state = Store(_state_dir(args), readonly=True)  # listing never creates state
    try:
        bundles, rows = inventory(Catalog(state))
    finally:
        state.close()
    if args.json:
        _print(args, {"bundles": bundles, "models": rows}, "")
    else:
        print(render_table(rows) or "no bundles imported (herd bundle import DIR)")
    return 0


@_os_errors
def cmd_rm(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state = Store(state_dir)
    try:
        configured = policy_mod.store_path(state_dir, args.manifest)
        store_root = bundle_store(state, args.name, configured)
        plan = plan_removal(state, store_root, args.name)
        if not args.yes:
            print(
                f"remove bundle {plan.bundle}: models "
                f"{', '.join(plan.models) or '(none)'}; {len(plan.blobs)} blob(s), "
                f"{human_bytes(plan.freed)} freed",
                file=sys.stderr,
            )
            if not sys.stdin.isatty():
                raise BundleError("not a terminal: pass --yes to confirm the removal")
            if input("proceed? [y/N] ").strip().lower() not in ("y", "yes"):
                print("cancelled", file=sys.stderr)
                return 1
        done = remove_bundle(state, store_root, args.name)
    finally:
        state.close()
    _print(
        args,
        {
            "bundle": done.bundle,
            "models": done.models,
            "blobs": done.blobs,
            "freed": done.freed,
        },
        f"removed bundle {done.bundle}: {len(done.models)} model(s), "
        f"{len(done.blobs)} blob(s), {human_bytes(done.freed)} freed",
    )
    return 0


def _policy_flags(parser: argparse.ArgumentParser, signers: bool = True) -> None:
    parser.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help="take bundles.* from this fleet.yaml instead of the applied revision",
    )
    if signers:
        parser.add_argument(
            "--trusted-signers",
            type=Path,
            metavar="FILE",
            help="allowed_signers file to trust (overrides bundles.trusted_signers)",
        )


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `herd bundle ...` to the `herd` parser."""
    from herd.cli import HelpFormatter, add_command

    bundle = sub.add_parser(
        "bundle",
        help="offline model bundles: create, sign, verify, import, list, rm",
        description="Offline model bundles: the air gap's only door.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  herd bundle create /media/usb/site-2026-11 --from-ollama ~/.ollama/models "
        "llama3.2:3b\n"
        "  herd bundle sign /media/usb/site-2026-11 --key ~/.ssh/id_ed25519\n"
        "  herd bundle import /media/usb/site-2026-11\n",
    )
    bsub = bundle.add_subparsers(
        dest="bundle_command",
        metavar="ACTION",
        required=True,
        parser_class=IntermixedParser,
    )

    p = add_command(
        bsub,
        "create",
        cmd_create,
        help="pack models into a new bundle directory (connected side)",
        examples="  herd bundle create out/site-2026-11 --from-ollama ~/.ollama/models "
        "llama3.2:3b qwen2.5:7b\n"
        "  herd bundle create out/b1 --from-gguf tiny.gguf --name tiny:latest "
        '--template tpl.txt --params \'{"stop":["</s>"]}\'\n'
        "  herd bundle create out/b2 --from-ollama /usr/share/ollama/.ollama/models "
        "phi3 --scan-report av.txt --scan-verdict clean --scan-tool clamav",
        parents=[common],
        json_flag=True,
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="new (or empty) directory")
    p.add_argument("models", nargs="*", metavar="MODEL:TAG", help="models to pack")
    p.add_argument("--from-ollama", metavar="DIR", help="an Ollama models directory")
    p.add_argument("--from-gguf", metavar="FILE", help="a bare GGUF file to wrap")
    p.add_argument("--name", metavar="NAME:TAG", help="model name for --from-gguf")
    p.add_argument("--template", metavar="FILE", help="prompt template (Go template)")
    p.add_argument("--params", metavar="JSON|FILE", help="default options object")
    p.add_argument("--system", metavar="FILE", help="default system prompt")
    p.add_argument("--bundle-name", metavar="NAME", help="default: OUT_DIR's name")
    p.add_argument(
        "--split-size",
        type=_split_size,
        default=DEFAULT_SPLIT,
        metavar="SIZE",
        help="split blobs larger than this into parts (default 3.9G, fits FAT32; "
        "0 = never)",
    )
    p.add_argument("--scan-report", metavar="FILE", help="the security team's report")
    p.add_argument("--scan-verdict", metavar="VERDICT", help="e.g. clean")
    p.add_argument("--scan-tool", default="external", metavar="NAME")
    p.add_argument("--scan-version", metavar="VERSION")
    p.add_argument(
        "--scan-command",
        metavar="CMD",
        help="external scanner run per file, must exit 0 (e.g. "
        "'clamscan --no-summary {path}')",
    )

    p = add_command(
        bsub,
        "sign",
        cmd_sign,
        help="sign bundle.yaml with an SSH key (ssh-keygen -Y sign -n herd-bundle)",
        examples="  herd bundle sign out/site-2026-11 --key ~/.ssh/id_ed25519",
        parents=[common],
        json_flag=True,
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--key", required=True, metavar="KEY", help="private key file")

    p = add_command(
        bsub,
        "verify",
        cmd_verify,
        help="check a bundle completely without writing anything (exit 0/1)",
        examples="  herd bundle verify /media/usb/site-2026-11\n"
        "  herd bundle verify /media/usb/b --trusted-signers /etc/herd/allowed_signers",
        parents=[common],
        json_flag=True,
    )
    p.add_argument("dir", metavar="DIR")
    _policy_flags(p)

    p = add_command(
        bsub,
        "import",
        cmd_import,
        help="verify a bundle and copy its models into the store",
        examples="  herd bundle import /media/usb/site-2026-11\n"
        "  herd bundle import /media/usb/site-2026-11 --dry-run\n"
        "  herd bundle import /media/usb/b --ollama-models "
        "/usr/share/ollama/.ollama/models --json\n"
        "  herd bundle import --from-peer http://10.20.0.12:11435 site-2026-11",
        parents=[common],
        json_flag=True,
    )
    p.add_argument(
        "dir",
        metavar="DIR",
        help="the bundle directory (with --from-peer: the bundle's name)",
    )
    p.add_argument(
        "--from-peer",
        metavar="URL",
        help="fetch the bundle from the other router of a pair (router.ha.peers), "
        "then verify and import it as from a stick",
    )
    _policy_flags(p)
    p.add_argument("--dry-run", action="store_true", help="show what would be imported")
    p.add_argument(
        "--ollama-models",
        metavar="DIR",
        help="also install the models into this local Ollama store (single host)",
    )

    p = add_command(
        bsub,
        "list",
        cmd_list,
        help="imported bundles and their models",
        examples="  herd bundle list\n  herd bundle list --json",
        parents=[common],
        json_flag=True,
    )

    p = add_command(
        bsub,
        "rm",
        cmd_rm,
        help="remove a bundle's models (blobs other models use are kept)",
        examples="  herd bundle rm site-2026-11\n  herd bundle rm site-2026-11 --yes",
        parents=[common],
        json_flag=True,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _policy_flags(p, signers=False)
