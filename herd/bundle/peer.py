"""`herd bundle import --from-peer URL NAME`: a bundle from the other router's registry.

The peer serves every file of an imported bundle under
`/v2/_herd/bundles/NAME/PATH` (herd.router.api.bundlefiles). This module
fetches them into a staging directory shaped exactly like the bundle on the
stick, and the caller then imports that directory with the same code as a
USB import: nothing the peer sends is trusted. The order keeps a hostile or
broken peer harmless:

1. `bundle.yaml` and its signature, each bounded, and the signature checked
   (herd.bundle.verify.read_signed) before anything else is asked for;
2. only the paths that signed index lists, each bounded by its signed size
   (a longer or shorter answer is refused);
3. then the ordinary import verifies hashes, tree, manifests and scan policy.

No DNS (the URL names an IP address, or a host in /etc/hosts), no proxy, no
redirects: one direct connection per file, with a timeout on every read.
"""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

from herd import hosts
from herd.bundle import layout, signature
from herd.bundle.kept import NAME_RE
from herd.bundle.policy import Policy
from herd.bundle.verify import read_signed
from herd.errors import BundleError

TIMEOUT_S = 30.0
CHUNK = 1 << 20
STAGING = "peer-staging"

Advance = Callable[[int], None]


class Peer:
    """The peer router at `url` (http://ADDRESS:PORT)."""

    def __init__(self, url: str, timeout: float = TIMEOUT_S):
        parts = urlsplit(url if "//" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise BundleError(f"--from-peer {url}: expected http://ADDRESS:PORT")
        address = hosts.lookup(parts.hostname)
        if address is None:
            raise BundleError(
                f"--from-peer {url}: {hosts.unresolvable(parts.hostname)}"
            )
        try:
            self.port = parts.port or 11435
        except ValueError:
            raise BundleError(f"--from-peer {url}: invalid port") from None
        self.address = address
        self.url = url
        self.timeout = timeout

    def _get(self, name: str, path: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        target = f"/v2/_herd/bundles/{quote(name)}/{quote(path)}"
        try:
            conn.request("GET", target, headers={"User-Agent": "herd-peer"})
            reply = conn.getresponse()
        except OSError as ex:
            conn.close()
            raise BundleError(f"peer {self.url}: {path}: {ex}") from ex
        if reply.status != 200:
            detail = _message(reply.read(4096))
            conn.close()
            hint = (
                " (the peer admits only its nodes and router.ha.peers: is this "
                "router's address among them, with the same manifest applied?)"
                if reply.status == 403
                else ""
            )
            raise BundleError(
                f"peer {self.url}: {path}: HTTP {reply.status}: {detail}{hint}"
            )
        return reply

    def fetch(
        self, name: str, path: str, out: Path, size: int, advance: Advance
    ) -> None:
        """Write exactly `size` bytes of `path` to `out`; refuse any other length."""
        reply = self._get(name, path)
        try:
            declared = reply.getheader("Content-Length")
            if declared is not None and declared.strip() != str(size):
                raise BundleError(
                    f"peer {self.url}: {path}: {declared} bytes offered, the signed "
                    f"bundle.yaml says {size}; refused"
                )
            out.parent.mkdir(parents=True, exist_ok=True)
            got = 0
            with open(out, "wb") as fh:
                while True:
                    try:
                        data = reply.read(min(CHUNK, size - got + 1))
                    except OSError as ex:
                        raise BundleError(f"peer {self.url}: {path}: {ex}") from ex
                    if not data:
                        break
                    got += len(data)
                    if got > size:
                        raise BundleError(
                            f"peer {self.url}: {path}: more than the {size} bytes the "
                            "signed bundle.yaml says; refused"
                        )
                    fh.write(data)
                    advance(len(data))
            if got != size:
                raise BundleError(
                    f"peer {self.url}: {path}: {got} of {size} bytes arrived "
                    "(connection cut?); run the import again to resume"
                )
        finally:
            reply.close()

    def fetch_small(self, name: str, path: str, out: Path, limit: int) -> None:
        """A file of unknown size (the index, the signature), at most `limit`."""
        reply = self._get(name, path)
        try:
            data = reply.read(limit + 1)
        except OSError as ex:
            raise BundleError(f"peer {self.url}: {path}: {ex}") from ex
        finally:
            reply.close()
        if len(data) > limit:
            raise BundleError(f"peer {self.url}: {path}: larger than {limit} bytes")
        out.write_bytes(data)


def _message(body: bytes) -> str:
    """The registry error's message, else the start of the body."""
    try:
        return json.loads(body)["errors"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return body[:200].decode("utf-8", errors="replace").strip() or "(no body)"


def staging_dir(state_dir: Path, name: str) -> Path:
    if not NAME_RE.match(name):
        raise BundleError(f"{name!r} is not a bundle name (e.g. site-2026-11)")
    return Path(state_dir) / STAGING / name


def fetch_bundle(
    peer: Peer,
    name: str,
    staging: Path,
    policy: Policy,
    progress: Callable[[int], Advance] | None = None,
) -> Path:
    """Rebuild bundle `name` from `peer` in `staging`; returns `staging`.

    The signature is checked before any other file is asked for. Files already
    staged at their signed size (an interrupted run) are not fetched again;
    the import that follows hashes everything anyway.
    """
    staging.mkdir(parents=True, exist_ok=True)
    peer.fetch_small(name, layout.INDEX, staging / layout.INDEX, layout.MAX_INDEX_BYTES)
    peer.fetch_small(
        name,
        layout.SIGNATURE,
        staging / layout.SIGNATURE,
        signature.MAX_SIGNATURE_BYTES,
    )
    doc, _ = read_signed(staging, policy)  # nothing parsed before this holds
    if doc.name != name:
        raise BundleError(
            f"peer {peer.url}: asked for bundle {name}, its bundle.yaml names "
            f"{doc.name}"
        )
    wanted = {p.path: p.size for entry in doc.files for p in entry.stored}
    _drop_unlisted(staging, wanted)
    todo = {
        path: size for path, size in wanted.items() if not _sized(staging / path, size)
    }
    advance = progress(sum(todo.values())) if progress else (lambda _: None)
    for path, size in todo.items():
        peer.fetch(name, path, staging / path, size, advance)
    return staging


def _sized(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _drop_unlisted(staging: Path, wanted: dict[str, int]) -> None:
    """Leftovers of an earlier run that this index does not list would make
    the tree check refuse the bundle: remove them."""
    keep = {layout.INDEX, layout.SIGNATURE, *wanted}
    for path in sorted(staging.rglob("*"), reverse=True):
        rel = path.relative_to(staging).as_posix()
        if path.is_symlink() or (path.is_file() and rel not in keep):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def discard(staging: Path) -> None:
    """Remove a staging directory once imported or refused."""
    shutil.rmtree(staging, ignore_errors=True)
