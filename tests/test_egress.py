"""Zero egress: router, sim and CLI send nothing to DNS or to any undeclared address.

Inside a network namespace this test creates (loopback, plus an interface
with a default route whose gateway has a static neighbour entry, so a stray
packet really leaves instead of waiting for ARP), `tcpdump -i any` records
while the whole stack runs: `herd validate/plan/apply/status`, `herd sim`,
`herd serve` and requests through the router over loopback. Addresses are
127.0.0.23/24, which /etc/hosts does not list, so any reverse lookup of them
would go to the resolver. A manifest naming a node by a host name that
/etc/hosts does not list must be refused, never resolved. Afterwards no
captured packet may go to port 53 or leave through anything but `lo`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

SETUP = """\
set -eu
ip link set lo up
ip link add herd0 type veth peer name herd1
ip addr add 10.213.0.1/24 dev herd0
ip link set herd0 up
ip link set herd1 up
ip neigh replace 10.213.0.2 lladdr 02:00:00:00:02:02 dev herd0 nud permanent
ip route add default via 10.213.0.2 dev herd0
# TCP and UDP: what a program sends (the kernel's own ND/MLD chatter is not herd's)
tcpdump -U -i any -n -w "$1" 'tcp or udp' 2>"$1.log" &
dump=$!
for i in $(seq 100); do grep -q listening "$1.log" 2>/dev/null && break; sleep 0.1; done
set +e
"$2" "$3" "$4"
status=$?
sleep 1
kill -INT $dump
wait $dump
exit $status
"""

DRIVER = r'''
import json, os, signal, subprocess, sys, time, urllib.request

work = sys.argv[1]
herd = [sys.executable, "-m", "herd"]
env = {**os.environ, "HERD_STATE_DIR": work + "/state", "HERD_KEEPALIVE": "1"}
env.pop("http_proxy", None); env.pop("HTTP_PROXY", None)
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
result = {}

def cli(name, *args):
    out = subprocess.run(herd + list(args), capture_output=True, text=True, env=env,
                         timeout=120)
    result[name] = {"rc": out.returncode, "out": out.stdout, "err": out.stderr}

def fleet(node_url, listen):
    return f"""apiVersion: herd/v1
kind: Fleet
metadata: {{name: egress}}
router:
  listen: {listen}
  clients:
    - {{name: local, networks: [127.0.0.0/8]}}
nodes:
  - {{name: sim, url: "{node_url}"}}
models:
  - {{name: llama3.2:3b, aliases: [gpt-4o-mini], place: {{nodes: [sim]}}}}
"""

sim = subprocess.Popen(herd + ["sim", "--host", "127.0.0.23", "--port", "0"],
                       stdout=subprocess.PIPE, text=True, env=env)
sim_url = sim.stdout.readline().split(" on ", 1)[1].split()[0]
with open(work + "/named.yaml", "w") as fh:
    fh.write(fleet("http://gpu-a.herd-egress.invalid:11434", "127.0.0.24:11435"))
with open(work + "/good.yaml", "w") as fh:
    fh.write(fleet(sim_url, "127.0.0.24:11435"))
cli("validate_named", "validate", work + "/named.yaml")
cli("apply_named", "apply", "--yes", work + "/named.yaml")
def serve():
    return subprocess.Popen(herd + ["serve"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)

router = None
if result["apply_named"]["rc"] == 0:
    # Accepted (the defect): serve it a while so the poller tries the name.
    router = serve()
    time.sleep(4)
cli("plan", "plan", work + "/good.yaml")
cli("apply", "apply", "--yes", work + "/good.yaml")
if router is None:
    router = serve()
    router.stdout.readline()  # the banner: a worker answers
base = "http://127.0.0.24:11435"
for _ in range(100):
    try:
        with direct.open(base + "/readyz", timeout=2) as reply:
            if reply.status == 200:
                break
    except OSError:
        pass
    time.sleep(0.1)
replies = []
for path, body in [
    ("/api/chat", {"model": "llama3.2:3b", "stream": False,
                   "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "gpt-4o-mini",
                              "messages": [{"role": "user", "content": "hi"}]}),
]:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with direct.open(request, timeout=30) as reply:
            replies.append(reply.status)
    except Exception as ex:
        replies.append(repr(ex))
result["replies"] = replies
cli("status", "status", "--json")
router.send_signal(signal.SIGTERM)
sim.send_signal(signal.SIGTERM)
router.wait(60)
sim.wait(60)
with open(work + "/result.json", "w") as fh:
    json.dump(result, fh)
'''


def _namespaces_work() -> str | None:
    """None if this host can run the test, else why not."""
    for tool in ("unshare", "ip", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link add herd0 type veth peer name herd1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace with a veth pair: {probe.stderr}"
    return None


def captured(pcap: Path) -> list[str]:
    out = subprocess.run(
        ["tcpdump", "-r", str(pcap), "-n", "-tt"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_router_sim_and_cli_send_nothing_to_dns_or_off_host(tmp_path):
    why = _namespaces_work()
    if why:
        pytest.skip(f"needs network namespaces (root, unshare, ip, tcpdump): {why}")
    (tmp_path / "setup.sh").write_text(SETUP)
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    pcap = tmp_path / "egress.pcap"
    run = subprocess.run(
        [
            "unshare",
            "-n",
            "bash",
            str(tmp_path / "setup.sh"),
            str(pcap),
            sys.executable,
            str(tmp_path / "driver.py"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    packets = captured(pcap)
    assert packets, "tcpdump captured nothing: the loopback traffic should show"
    to_dns = [p for p in packets if ".53: " in p or ".53 >" in p]
    off_host = [p for p in packets if p.split()[1] != "lo"]
    assert not to_dns and not off_host, "\n".join(
        ["packets to DNS:", *to_dns[:10], "packets off loopback:", *off_host[:10]]
    )
    # The name is refused at validation and at apply, saying why.
    for step in ("validate_named", "apply_named"):
        assert result[step]["rc"] == 1, result[step]
        assert "/etc/hosts" in result[step]["out"] + result[step]["err"]
    assert result["plan"]["rc"] == 2 and result["apply"]["rc"] == 0, result
    assert result["replies"] == [200, 200], result["replies"]
    status = json.loads(result["status"]["out"])
    assert status["source"].startswith("live router"), status
