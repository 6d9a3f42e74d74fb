"""The agent keeps one connection to the router (and one to its Ollama) open
from beat to beat, and gets through when the router closed it while idle."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from herd.discovery import fleetkey
from herd.node.agent import DEFAULT_INTERVAL_S, Agent, AgentConfig
from herd.settings import KEEPALIVE
from tests.discovery.agentkit import discovery_manifest, make_key


class Server(ThreadingHTTPServer):
    """HTTP/1.1 on loopback that counts connections, and can close each one
    after its first answer (a router whose keep-alive timeout ran out)."""

    daemon_threads = True

    def __init__(self, close_after_answer: bool = False):
        self.connections = 0
        self.requests: list[str] = []
        self.close_after_answer = close_after_answer
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def process_request(self, request, client_address):
        self.connections += 1
        super().process_request(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.server.close_after_answer:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        if self.server.close_after_answer:
            self.close_connection = True

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        self._answer({"models": [], "version": "0.12.3"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(self.headers[fleetkey.HEADER_NONCE])
        self._answer({"admitted": True, "name": json.loads(body)["name"]})


@pytest.fixture
def servers():
    made: list[Server] = []

    def make(**kw) -> Server:
        made.append(Server(**kw))
        return made[-1]

    yield make
    for server in made:
        server.shutdown()
        server.server_close()


def agent_for(router: Server, ollama: Server) -> Agent:
    config = AgentConfig(
        name="gpu-k",
        ollama=ollama.url,
        key_path="-",
        router=router.url,
        advertise="http://127.0.0.1:11434",
    )
    return Agent(config, (fleetkey.generate(),))


def test_heartbeats_share_one_connection(servers):
    router, ollama = servers(), servers()
    agent = agent_for(router, ollama)
    for _ in range(4):
        status, doc = agent.send()
        assert (status, doc["admitted"]) == (200, True)
    agent.http.close()
    assert router.connections == 1
    assert len(router.requests) == 4
    # tags, ps and version, four times, on one connection to the local Ollama
    assert (ollama.connections, len(ollama.requests)) == (1, 12)


def test_a_connection_the_router_closed_is_replaced_and_signed_anew(servers):
    router, ollama = servers(close_after_answer=True), servers()
    agent = agent_for(router, ollama)
    for _ in range(3):
        status, _ = agent.send()
        assert status == 200
    agent.http.close()
    assert router.connections == 3
    assert len(set(router.requests)) == len(router.requests) == 3  # fresh nonces


def test_unchanged_models_are_left_out_until_the_router_asks(servers):
    router, ollama = servers(), servers()
    agent = agent_for(router, ollama)
    sent: list[dict] = []
    post = agent._post

    def spy(body: bytes, headers: dict) -> tuple:
        sent.append(json.loads(body))
        if len(sent) == 3:
            return 200, {"admitted": False, "resend": True}
        return post(body, headers)

    agent._post = spy
    for _ in range(3):
        assert agent.send()[0] == 200
    agent.http.close()
    assert "models" in sent[0] and "loaded" in sent[0] and "version" in sent[0]
    assert "models" not in sent[1] and "version" not in sent[1]
    assert sent[1]["inventory"] == sent[0]["inventory"] and "metrics" in sent[1]
    # The router did not hold it (`resend`): everything again at once.
    assert "models" not in sent[2] and "models" in sent[3]


class Relay:
    """A loopback TCP relay to `target` that counts the connections made
    through it: each closes when either side closes, like the real one."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            upstream = socket.create_connection(self.target, timeout=10)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def test_the_router_holds_an_agents_connection_between_beats(tmp_path, servers, router):
    """With the router's default keep-alive, an agent beating at its default
    interval (or faster) sends every beat on one connection: no accept, new
    greenlet and close per beat at the router."""
    assert KEEPALIVE.default() > DEFAULT_INTERVAL_S
    make_key(tmp_path)
    ollama = servers()
    static = SimpleNamespace(name="static-a", url=ollama.url)  # polled, never used
    r = router(
        discovery_manifest([static], tmp_path / "fleet.key"),
        env={"HERD_KEEPALIVE": str(KEEPALIVE.default())},
    )
    host, port = r.url.removeprefix("http://").split(":")
    relay = Relay((host, int(port)))
    config = AgentConfig(
        name="gpu-k",
        ollama=ollama.url,
        key_path=str(tmp_path / "fleet.key"),
        router=relay.url,
        advertise="http://127.0.0.1:11434",
    )
    agent = Agent(config, fleetkey.load(tmp_path / "fleet.key"))
    try:
        for i in range(3):
            if i:
                time.sleep(1.5)  # idle longer than the tests' usual keep-alive
            status, doc = agent.send()
            assert (status, doc["admitted"]) == (200, True), doc
    finally:
        agent.http.close()
        relay.close()
    assert relay.connections == 1
