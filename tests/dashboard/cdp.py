"""Headless Chromium driven over the DevTools protocol (a test helper).

`Chromium.start()` runs Debian's `chromium` with a throwaway profile and
remote debugging on a loopback port it picks itself (read back from the
profile's DevToolsActivePort); `page()` connects to its tab with
websocket-client. `call()` sends one command and returns its result; every
event that arrives meanwhile is kept in `events` for the test to inspect.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

BINARY = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    def __init__(self, url: str, timeout: float = 10):
        # No Origin header: Chromium refuses DevTools connections from origins
        # it was not told to allow.
        self.ws = websocket.create_connection(
            url, timeout=timeout, suppress_origin=True
        )
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply["result"].get("value")

    def close(self) -> None:
        self.ws.close()


class Chromium:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port

    @classmethod
    def start(cls, profile: Path, log: Path, timeout: float = 30) -> Chromium:
        argv = [
            BINARY,
            "--headless",
            "--disable-gpu",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            # No phoning home from the browser itself while the test runs.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--window-size=1366,768",
            "about:blank",
        ]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium's sandbox refuses root
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output = log.read_text(errors="replace")
                raise RuntimeError(f"chromium exited: {output}")
            if active.exists():
                lines = active.read_text().split()
                if lines:
                    return cls(proc, int(lines[0]))
            time.sleep(0.1)
        proc.kill()
        raise RuntimeError(f"chromium did not open DevTools: {log.read_text()}")

    def page(self) -> Page:
        url = f"http://127.0.0.1:{self.port}/json/list"
        with urllib.request.urlopen(url, timeout=10) as reply:
            targets = json.loads(reply.read())
        tab = next(t for t in targets if t["type"] == "page")
        return Page(tab["webSocketDebuggerUrl"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
