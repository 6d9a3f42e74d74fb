"""`herd sim`'s model management: POST /api/pull, POST /api/copy, DELETE /api/delete.

They work on the node's store (`herd sim --store DIR`) as Ollama's do on its
own (shared shapes: progress NDJSON for pull, an empty 200 for copy and
delete, `{"error": ...}` otherwise). The pull itself runs in a native thread
(herd.sim.puller does blocking HTTP and disk I/O); the request's greenlet
streams its progress, one JSON object per line, until it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import falcon
import gevent

from herd.sim import SimError, SimState
from herd.sim.inference import JSON_TYPE, dumps, read_body
from herd.sim.puller import Puller
from herd.sim.store import Name, StoreError

POLL_S = 0.05


class _Run:
    """A pull in a native thread: its progress events and its outcome."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.error: str | None = None
        self.done = threading.Event()


class Management:
    """The three routes, over `state.store`."""

    def __init__(self, state: SimState):
        self.state = state

    def _store(self) -> Any:
        if self.state.store is None:
            raise SimError(
                500, "model management needs a store: run herd sim --store DIR"
            )
        return self.state.store

    def on_post_pull(self, req: falcon.Request, resp: falcon.Response) -> None:
        store = self._store()
        body = read_body(req)
        model = body.get("model") or body.get("name")
        try:
            Name.parse(model)
        except StoreError as ex:
            raise SimError(ex.status, ex.message) from ex
        run = _Run()
        puller = Puller(
            store,
            run.events.append,
            insecure=bool(body.get("insecure")),
            part_bytes=self.state.part_bytes,
            rate=self.state.pull_rate,
        )

        def work() -> None:
            try:
                puller.pull(model)
            except StoreError as ex:
                run.error = ex.message
            except Exception as ex:  # noqa: BLE001 - reported as Ollama would
                run.error = f"{type(ex).__name__}: {ex}"
            finally:
                self.state.pulled_bytes += puller.fetched
                run.done.set()

        threading.Thread(target=work, name="sim-pull", daemon=True).start()
        resp.content_type = "application/x-ndjson"
        if body.get("stream", True) is False:
            while not run.done.is_set():
                gevent.sleep(POLL_S)
            self.state.refresh()
            resp.content_type = JSON_TYPE
            if run.error:
                raise SimError(500, run.error)
            resp.data = dumps({"status": "success"})
            return
        resp.stream = self._stream(run)

    def _stream(self, run: _Run) -> Iterator[bytes]:
        sent = 0
        while True:
            finished = run.done.is_set()
            while sent < len(run.events):
                yield dumps(run.events[sent]) + b"\n"
                sent += 1
            if finished:
                break
            gevent.sleep(POLL_S)
        self.state.refresh()
        if run.error:
            yield dumps({"error": run.error}) + b"\n"

    def on_post_copy(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req)
        try:
            self._store().copy(body.get("source"), body.get("destination"))
        except StoreError as ex:
            raise SimError(ex.status, ex.message) from ex
        self.state.refresh()
        resp.status = falcon.HTTP_200
        resp.data = b""

    def on_delete_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req)
        try:
            self._store().delete(body.get("model") or body.get("name"))
        except StoreError as ex:
            raise SimError(ex.status, ex.message) from ex
        self.state.refresh()
        resp.status = falcon.HTTP_200
        resp.data = b""
