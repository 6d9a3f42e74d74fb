"""State integrity through the real CLI: the pointer's shape, its repair by
`herd serve`, racing applies, and revisions edited inside herd.db."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from herd.errors import StateError
from herd.store import POINTER_NAME, Store, read_pointer, sha256_hex
from tests.conftest import ROOT
from tests.router.routerproc import Sim, free_port, manifest


def _fleet(retention_days: int = 30) -> str:
    """A valid manifest whose only node is a closed loopback port (no traffic
    leaves the host; the router serves without it)."""
    dead = Sim(proc=None, url=f"http://127.0.0.1:{free_port()}", name="n1")
    return manifest([dead]).replace(
        "retention_days: 30", f"retention_days: {retention_days}"
    )


def _files(tmp_path: Path, *days: int) -> list[Path]:
    files = []
    for d in days:
        f = tmp_path / f"fleet-{d}.yaml"
        f.write_text(_fleet(d))
        files.append(f)
    return files


def _pointer_bytes(manifest_text: str, **override) -> bytes:
    raw = {
        "revision": 1,
        "sha256": sha256_hex(manifest_text.encode()),
        "base_dir": "/x",
        "manifest": manifest_text,
    }
    raw.update(override)
    return json.dumps(raw).encode()


# -- item 21: every field of current.json is type-checked ------------------------

TEXT = "a: 1\n"
GOOD_SHA = sha256_hex(TEXT.encode())
BAD_POINTERS = {
    "manifest-int": _pointer_bytes(TEXT, manifest=5),
    "manifest-list": _pointer_bytes(TEXT, manifest=["a: 1"]),
    "manifest-null": _pointer_bytes(TEXT, manifest=None),
    "manifest-object": _pointer_bytes(TEXT, manifest={"a": 1}),
    "revision-string": _pointer_bytes(TEXT, revision="1"),
    "revision-bool": _pointer_bytes(TEXT, revision=True),
    "revision-float": _pointer_bytes(TEXT, revision=1.5),
    "revision-zero": _pointer_bytes(TEXT, revision=0),
    "sha256-int": _pointer_bytes(TEXT, sha256=7),
    "sha256-upper": _pointer_bytes(TEXT, sha256=GOOD_SHA.upper()),
    "base_dir-int": _pointer_bytes(TEXT, base_dir=3),
    "base_dir-list": _pointer_bytes(TEXT, base_dir=["/x"]),
    "missing-key": json.dumps({"revision": 1, "sha256": GOOD_SHA}).encode(),
    "unknown-key": _pointer_bytes(TEXT, extra=1),
    "top-level-list": b"[1, 2]",
    "top-level-null": b"null",
    "top-level-string": b'"current"',
    "truncated": _pointer_bytes(TEXT)[:20],
    "empty": b"",
    "not-utf8": b"\xff\xfe{}",
    "lone-surrogate": _pointer_bytes(TEXT).replace(b"a: 1", b"\\ud800"),
    "deeply-nested": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("name", sorted(BAD_POINTERS))
def test_a_pointer_of_the_wrong_shape_is_a_clear_state_error(tmp_path, name):
    (tmp_path / POINTER_NAME).write_bytes(BAD_POINTERS[name])
    with pytest.raises(StateError) as caught:
        read_pointer(tmp_path)
    assert str(tmp_path / POINTER_NAME) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_pointer_names_the_bad_field(tmp_path):
    (tmp_path / POINTER_NAME).write_bytes(BAD_POINTERS["manifest-list"])
    with pytest.raises(StateError, match="manifest must be a string, not an array"):
        read_pointer(tmp_path)
    (tmp_path / POINTER_NAME).write_bytes(BAD_POINTERS["revision-string"])
    with pytest.raises(StateError, match="revision must be an integer"):
        read_pointer(tmp_path)


# -- item 22: `herd serve` repairs a damaged pointer from the head revision ------


def _serve(state_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HERD_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1"}
    env["HERD_KEEPALIVE"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "herd", "serve", "--bind", f"127.0.0.1:{port}"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _status_when_up(proc: subprocess.Popen, url: str, log: Path) -> dict:
    # A bound, not a sleep: with the suite on parallel workers a start took >30 s.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"herd serve exited {proc.returncode}: {log.read_text()}"
            )
        try:
            with urllib.request.urlopen(url + "/fleet/status", timeout=2) as reply:
                return json.loads(reply.read())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"herd serve did not come up: {log.read_text()}")


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[
            : len(raw) // 2
        ],  # truncated mid-write by a crash or a full disk
        lambda raw: b"",  # emptied
        lambda raw: raw.replace(b'"revision": 2', b'"revision": "2"'),  # wrong type
    ],
    ids=["truncated", "empty", "wrong-type"],
)
def test_serve_repairs_a_damaged_pointer_from_the_head(
    herd, tmp_path, state_dir, damage
):
    for f in _files(tmp_path, 31, 32):
        assert herd("apply", "--yes", str(f)).returncode == 0
    pointer = state_dir / POINTER_NAME
    pointer.write_bytes(damage(pointer.read_bytes()))
    log = tmp_path / "serve.log"
    proc, url = _serve(state_dir, log)
    try:
        status = _status_when_up(proc, url, log)
    finally:
        _stop(proc)
    head = Store(state_dir, create=False).head()
    assert (status["revision"], status["sha256"]) == (2, head.sha256)
    assert status["reload_error"] is None
    assert f"repaired {pointer}" in log.read_text()
    assert "now revision 2" in log.read_text()
    assert read_pointer(state_dir).revision == 2


# -- item 24: a revision edited inside herd.db is refused wherever it is read ----


def _tamper(state_dir: Path, rev: int) -> None:
    """Edit a stored manifest by hand, as someone with sqlite3 could."""
    db = sqlite3.connect(state_dir / "herd.db")
    with db:
        db.execute(
            "UPDATE revisions SET manifest = CAST(replace(CAST(manifest AS TEXT), "
            "'127.0.0.0/8', '0.0.0.0/0') AS BLOB) WHERE id = ?",
            [rev],
        )
    db.close()


def test_show_and_rollback_refuse_a_tampered_revision(herd, tmp_path, state_dir):
    files = _files(tmp_path, 31, 32)
    for f in files:
        assert herd("apply", "--yes", str(f)).returncode == 0
    _tamper(state_dir, 1)
    for args in (["show", "1"], ["rollback", "1", "--yes"]):
        out = herd(*args)
        assert out.returncode == 1, (args, out.stdout)
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert "revision 1 does not match its recorded sha256" in lines[0]
    assert [r.id for r in Store(state_dir, create=False).revisions()] == [1, 2]
    # The intact revision is still shown byte for byte.
    assert herd("show", "2").stdout == files[1].read_text()
    # history lists both and marks the altered one.
    listed = json.loads(herd("history", "--json").stdout)
    assert [(r["revision"], r["intact"]) for r in listed] == [(1, False), (2, True)]
    assert "!1" in herd("history").stdout


def test_a_revision_retyped_as_text_with_the_same_bytes_is_still_intact(
    herd, tmp_path, state_dir
):
    (f,) = _files(tmp_path, 31)
    assert herd("apply", "--yes", str(f)).returncode == 0
    db = sqlite3.connect(state_dir / "herd.db")
    with db:
        db.execute("UPDATE revisions SET manifest = CAST(manifest AS TEXT)")
    db.close()
    out = herd("show", "1")
    assert (out.returncode, out.stdout) == (0, f.read_text())


def test_a_tampered_head_is_refused_by_apply_and_serve_repair(
    herd, tmp_path, state_dir
):
    first, second, third = _files(tmp_path, 31, 32, 33)
    for f in (first, second):
        assert herd("apply", "--yes", str(f)).returncode == 0
    _tamper(state_dir, 2)
    out = herd("apply", "--yes", str(third))
    assert out.returncode == 1 and "revision 2 does not match" in out.stderr
    # serve must rebuild the pointer from the head: it refuses the altered bytes.
    (state_dir / POINTER_NAME).unlink()
    out = herd("serve", "--bind", f"127.0.0.1:{free_port()}", timeout=60)
    assert out.returncode == 1, out.stdout
    assert "revision 2 does not match its recorded sha256" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (state_dir / POINTER_NAME).exists()


# -- item 23: two racing applies never leave the pointer behind the head ---------

RACER = textwrap.dedent(
    """
    import fcntl, sys, time
    from pathlib import Path

    from herd.store import Store

    gate, role, fleet = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    deadline = time.monotonic() + 60

    if role == "slow":
        # Stop between the commit and the pointer write until the test says go.
        write_pointer = Store._write_pointer

        def paused(self, rev):
            (gate / "paused").write_text(str(rev.id))
            while not (gate / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            write_pointer(self, rev)

        Store._write_pointer = paused
    else:
        # Tell the test when this process waits for another one's lock.
        real_flock = fcntl.flock

        def flock(fd, op):
            try:
                return real_flock(fd, op)
            except BlockingIOError:
                (gate / "blocked").touch()
                raise

        fcntl.flock = flock

    from herd.cli import main

    sys.exit(main(["apply", "--yes", fleet]))
    """
)


def _wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_racing_applies_never_move_the_pointer_backwards(herd, tmp_path, state_dir):
    base, slow_file, fast_file = _files(tmp_path, 31, 32, 33)
    assert herd("apply", "--yes", str(base)).returncode == 0
    gate = tmp_path / "gate"
    gate.mkdir()
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    env = {**os.environ, "HERD_STATE_DIR": str(state_dir)}

    def racer(role: str, fleet: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(script), str(gate), role, str(fleet)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    slow = racer("slow", slow_file)
    fast = None
    try:
        # The slow apply has committed revision 2 and not yet moved the pointer.
        _wait_for(lambda: (gate / "paused").exists() or slow.poll() is not None, "A")
        assert (gate / "paused").read_text() == "2", slow.stderr.read()
        fast = racer("fast", fast_file)
        # The fast apply either finishes (no lock) or waits for the slow one.
        _wait_for(lambda: fast.poll() is not None or (gate / "blocked").exists(), "B")
        (gate / "go").touch()
        results = [(p.wait(60), p.stdout.read(), p.stderr.read()) for p in (slow, fast)]
    finally:
        for p in (slow, fast):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
    for code, out, err in results:
        assert code == 0 and "Traceback" not in err, (out, err)
    store = Store(state_dir, create=False)
    head = store.head()
    assert head.id == 3
    pointer = read_pointer(state_dir)
    assert (pointer.revision, pointer.sha256) == (head.id, head.sha256)
