"""Every `herd bundle ...` command line the docs show runs as shown.

The lines are read from README.md, bundles/README.md and each action's
`--help` examples, so this test follows the docs when they change. Only the
environment is adapted: /media/usb, the Ollama stores and the key map to a
temp directory, whose fake Ollama store holds whatever models the lines name.
Prerequisites a reader would have (a bundle to verify, a signed bundle to
import, an imported bundle to remove) are made with the library first.
"""

from __future__ import annotations

import contextlib
import io
import os
import pty
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from herd.bundle import signature
from herd.bundle.catalog import Catalog
from herd.bundle.importer import import_bundle
from herd.bundle.ollama import Layer, ModelStore, encode_manifest
from herd.bundle.policy import Policy
from herd.bundle.scan import CONFIG
from herd.cli import build_parser, main
from herd.store import Store
from tests.bundle.bundle_helpers import (
    ALLOWED,
    MODEL,
    ROOT,
    TEST_KEY,
    make_bundle,
    sha,
    tiny_gguf,
)
from tests.bundle.peerserver import Server, registry_app

ACTIONS = ("create", "sign", "verify", "import", "list", "rm")
#: What "…" stands for in `herd bundle create … --scan-report ...`.
ELLIPSIS = "/media/usb/site-2026-11 --from-ollama ~/.ollama/models llama3.2:3b"


def doc_lines(markdown: str) -> list[str]:
    """`herd bundle` lines of the ```sh blocks, continuation lines joined."""
    lines, block, pending = [], False, ""
    for raw in markdown.splitlines():
        if raw.startswith("```"):
            block = raw.strip() in ("```sh", "```bash", "```console")
            continue
        if not block:
            continue
        text = pending + raw.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text.startswith("herd bundle "):
            lines.append(text)
    return lines


def help_lines() -> list[str]:
    """The examples of `herd --help`, `herd bundle --help` and each action's."""
    out = []
    for argv in (
        ["--help"],
        ["bundle", "--help"],
        *(["bundle", a, "--help"] for a in ACTIONS),
    ):
        text = io.StringIO()
        with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
            main(argv)
        examples = text.getvalue().split("examples:\n", 1)[1]
        out += [
            line.strip()
            for line in examples.splitlines()
            if line.strip().startswith("herd bundle ")
        ]
    return out


SOURCES = {
    "README.md": lambda: doc_lines((ROOT / "README.md").read_text()),
    "bundles/README.md": lambda: doc_lines((ROOT / "bundles/README.md").read_text()),
    "--help": help_lines,
}


class Site:
    """A temp directory standing in for the paths the docs use."""

    def __init__(self, tmp: Path):
        self.work = tmp / "work"
        self.state = tmp / "state"
        self.ollama = tmp / "ollama-models"
        self.work.mkdir()
        (self.work / "tiny.gguf").write_bytes(tiny_gguf())
        (self.work / "tpl.txt").write_text("{{ .Prompt }}")
        (self.work / "av.txt").write_text("clamav: OK\n")
        self.paths = [
            ("/media/usb", str(tmp / "usb")),
            ("~/.ollama/models", str(self.ollama)),
            ("/usr/share/ollama/.ollama/models", str(self.ollama)),
            ("~/.ssh/id_ed25519", str(TEST_KEY)),
            ("/etc/herd/allowed_signers", str(ALLOWED)),
            ("bundles/example", str(ROOT / "bundles/example")),
            ("tests/bundle/keys/allowed_signers", str(ALLOWED)),
        ]
        self._apply_policy(tmp)
        self.peers: list[Server] = []

    def close(self) -> None:
        for server in self.peers:
            server.close()

    def _apply_policy(self, tmp: Path) -> None:
        """The site's manifest names the trusted signers, as the README says.

        require_scan is off: the docs' `--from-gguf` example bundle carries no
        scan report, and scan policy is not what this test is about.
        """
        fleet = tmp / "fleet.yaml"
        fleet.write_text(
            "apiVersion: herd/v1\nkind: Fleet\nmetadata: {name: t}\n"
            "router: {listen: '127.0.0.1:11435', node_networks: [127.0.0.0/8]}\n"
            "nodes: [{name: n1, url: 'http://127.0.0.1:11434'}]\n"
            "models: [{name: 'tiny:latest', place: {nodes: [n1]}}]\n"
            f"bundles: {{trusted_signers: '{ALLOWED}', require_scan: false}}\n"
        )
        code, err = self.run(["herd", "apply", str(fleet), "--yes"])
        assert code == 0, err

    def adapt(self, line: str) -> list[str]:
        argv = shlex.split(line.replace("…", ELLIPSIS), comments=True)
        out = []
        for token in argv:
            for prefix, target in self.paths:
                if token == prefix or token.startswith(prefix + "/"):
                    token = target + token[len(prefix) :]
                    break
            out.append(token)
        return out

    def add_ollama_model(self, name: str) -> None:
        store = ModelStore(self.ollama)
        if store.manifest_path(name).exists():
            return
        store.prepare()
        blobs = []
        for media, data in ((MODEL, tiny_gguf(seed=len(name))), (CONFIG, b"{}\n")):
            (store.blobs_dir / f"sha256-{sha(data)}").write_bytes(data)
            blobs.append(Layer(media, f"sha256:{sha(data)}", len(data)))
        store.write_manifest(name, encode_manifest(blobs[1], blobs[:1]))

    def prepare(self, argv: list[str]) -> None:
        """What a reader following the docs would already have done."""
        args = build_parser().parse_args(argv[1:])
        action = args.bundle_command
        if action == "create":
            shutil.rmtree(self.work / args.out_dir, ignore_errors=True)
            for name in args.models if args.from_ollama else ():
                self.add_ollama_model(name)
        elif action == "import" and args.from_peer:
            # The peer router of the docs is a registry on loopback holding it.
            server = Server(registry_app(self._peer_store(args.dir)))
            self.peers.append(server)
            argv[argv.index(args.from_peer)] = server.url
        elif action in ("sign", "verify", "import"):
            bundle = self.work / args.dir
            if not (bundle / "bundle.yaml").exists():
                make_bundle(bundle, name=bundle.name, sign_with=None)
            if action != "sign" and not (bundle / "bundle.yaml.sig").exists():
                signature.sign(bundle, TEST_KEY)
            if args.ollama_models if action == "import" else False:
                Path(args.ollama_models).mkdir(parents=True, exist_ok=True)
        elif action == "rm":
            state = Store(self.state)
            try:
                imported = Catalog(state).bundle(args.name) is not None
            finally:
                state.close()
            if not imported:
                bundle = self.work / "prep" / args.name
                make_bundle(bundle, name=args.name)
                code, err = self.run(["herd", "bundle", "import", str(bundle)])
                assert code == 0, err

    def _peer_store(self, name: str) -> Path:
        """A store (the peer's) into which bundle `name` was imported."""
        store = self.work / "peer" / "store"
        state = Store(self.work / "peer" / "state")
        try:
            if Catalog(state).bundle(name) is None:
                bundle = make_bundle(self.work / "peer" / "stick" / name, name=name)
                policy = Policy(trusted_signers=ALLOWED, require_scan=True, store=store)
                import_bundle(bundle, policy, state)
        finally:
            state.close()
        return store

    def run(self, argv: list[str]) -> tuple[int, str]:
        """`herd ...` in-process (herd.cli.main), in the work directory.

        stdin is a real terminal with 'y' typed in, for the confirmations.
        Returns the exit code and what went to stderr.
        """
        leader, follower = pty.openpty()
        os.write(leader, b"y\n")
        saved = (Path.cwd(), sys.stdin, sys.stderr, os.environ.get("HERD_STATE_DIR"))
        err = io.StringIO()
        try:
            os.chdir(self.work)
            os.environ["HERD_STATE_DIR"] = str(self.state)
            sys.stdin = open(follower, closefd=False)  # noqa: SIM115
            sys.stderr = err
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(argv[1:])
                except SystemExit as ex:  # argparse refusing the line
                    code = ex.code if isinstance(ex.code, int) else 2
        finally:
            os.chdir(saved[0])
            sys.stdin, sys.stderr = saved[1], saved[2]
            if saved[3] is None:
                os.environ.pop("HERD_STATE_DIR", None)
            else:
                os.environ["HERD_STATE_DIR"] = saved[3]
            os.close(leader)
            os.close(follower)
        return code, err.getvalue()


def test_the_docs_show_the_intermixed_create_form():
    lines = SOURCES["README.md"]() + SOURCES["bundles/README.md"]()
    assert any(re.search(r"create \S+ --from-ollama \S+ \S+", line) for line in lines)


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_documented_bundle_command_runs(source, tmp_path):
    lines = SOURCES[source]()
    assert lines, f"no `herd bundle` lines found in {source}"
    site = Site(tmp_path)
    try:
        for line in lines:
            argv = site.adapt(line)
            site.prepare(argv)
            code, err = site.run(argv)
            assert code == 0, f"{source}: {line}\n{err}"
            assert "usage:" not in err, f"{source}: {line}\n{err}"
    finally:
        site.close()


def test_create_accepts_models_after_options():
    """The parse alone: options may sit between OUT and MODEL..."""
    args = build_parser().parse_args(
        ["bundle", "create", "out", "--from-ollama", "dir", "a:1", "b:2"]
    )
    assert args.out_dir == "out" and args.models == ["a:1", "b:2"]
    assert args.from_ollama == "dir"
