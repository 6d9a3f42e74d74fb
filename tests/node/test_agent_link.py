"""The agent keeps one connection to the router (and one to its Ollama) open
from beat to beat, and gets through when the router closed it while idle."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from herd.discovery import fleetkey
from herd.node.agent import Agent, AgentConfig


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
