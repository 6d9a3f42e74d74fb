"""`herd keygen` and `herd node`: the CLI of the fleet key and the node agent."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from herd.digits import decimal
from herd.discovery import fleetkey
from herd.node.agent import (
    DEFAULT_INTERVAL_S,
    DEFAULT_OLLAMA,
    Agent,
    AgentConfig,
    AgentError,
    default_name,
    http_url,
)


def keygen(args: argparse.Namespace) -> int:
    """Write a new fleet key (0600) and print its path and fingerprint."""
    from herd.cli import print_json

    key = fleetkey.generate()
    path = fleetkey.write(args.out, key, force=args.force)
    if args.json:
        print_json({"path": str(path), "fingerprint": key.fingerprint})
    else:
        print(f"fleet key written to {path} (mode 0600)")
        print(f"fingerprint {key.fingerprint}")
        print(
            "name it in the manifest (discovery.node_keys) and copy it to each "
            "node (herd node --key FILE)"
        )
    return 0


def node(args: argparse.Namespace) -> int:
    """Run the node agent until SIGTERM/SIGINT, then say goodbye."""
    import gevent

    _logging(args.verbose)
    keys = fleetkey.load(args.key)
    if args.router:
        host, _ = http_url(args.router, "--router")
        _ip_literal(host, "--router")
    http_url(args.ollama, "--ollama")
    if args.lan_proxy:
        _addr_port(args.lan_proxy)
    config = AgentConfig(
        name=args.name or default_name(),
        ollama=args.ollama.rstrip("/"),
        key_path=args.key,
        router=args.router,
        advertise=args.advertise,
        interval_s=args.interval,
        lan_proxy=args.lan_proxy,
    )
    agent = Agent(config, keys)
    stop = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    services = _start_services(agent, config, keys, stop, args)
    logging.getLogger("herd.node").info(
        "herd node %s: ollama %s, router %s, every %gs",
        config.name,
        config.ollama,
        config.router or "(found by mDNS)",
        config.interval_s,
    )
    agent.run(stop.is_set, lambda s: stop.wait(s))
    for service in services:
        service.stop()
    return 0


def _start_services(agent: Agent, config: AgentConfig, keys, stop, args) -> list:
    """The LAN proxy and mDNS, when asked for (each has `stop()`)."""
    services: list = []
    if config.lan_proxy:
        from herd.node.lanproxy import LanProxy

        proxy = LanProxy(config.lan_proxy, config.ollama, agent)
        proxy.start()
        services.append(proxy)
    if not config.router:
        from herd.node.finder import RouterFinder

        finder = RouterFinder(agent, keys, stop, args.mdns_interface or ())
        finder.start()
        services.append(finder)
    return services


def _ip_literal(host: str, what: str) -> None:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError as ex:
        raise AgentError(
            f"{what}: use an IP address, not {host!r} (herd resolves no names)"
        ) from ex


def _addr_port(value: str) -> None:
    host, sep, port = value.rpartition(":")
    number = decimal(port, 5)
    if not sep or number is None or not 0 < number < 65536:
        raise AgentError(f"--lan-proxy: {value!r} must be ADDR:PORT")
    _ip_literal(host.strip("[]"), "--lan-proxy")


def _logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("herd")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `keygen` and `node` to the `herd` parser."""
    from herd.cli import add_command

    parser = add_command(
        sub,
        "keygen",
        keygen,
        help="create the fleet key that signs node heartbeats (mode 0600)",
        examples=f"""\
  herd keygen                           write {fleetkey.DEFAULT_PATH}
  herd keygen --out ./fleet.key --json  elsewhere; JSON with path and fingerprint
then: discovery.node_keys: {fleetkey.DEFAULT_PATH} in the manifest, and a copy
on each node for `herd node --key`""",
        parents=[common],
        json_flag=True,
    )
    parser.add_argument(
        "--out",
        default=fleetkey.DEFAULT_PATH,
        metavar="FILE",
        help=f"where to write the key (default {fleetkey.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing key file"
    )
    parser = add_command(
        sub,
        "node",
        node,
        help="run the node agent: signed heartbeats with host metrics and the "
        "local Ollama's models, found by (or pointed at) the router",
        examples="""\
  herd node                                   find the router by mDNS
  herd node --router http://10.20.1.2:11435   skip mDNS
  herd node --lan-proxy 10.20.2.7:11434       expose a loopback-only Ollama to
                                              the router (and nobody else)
  herd node --ollama http://127.0.0.1:11434 --key /etc/herd/fleet.key""",
        parents=[common],
    )
    parser.add_argument(
        "--router", metavar="URL", help="router URL (http://IP:PORT); default: mDNS"
    )
    parser.add_argument(
        "--ollama",
        default=DEFAULT_OLLAMA,
        metavar="URL",
        help=f"the local Ollama (default {DEFAULT_OLLAMA})",
    )
    parser.add_argument(
        "--key",
        default=fleetkey.DEFAULT_PATH,
        metavar="FILE",
        help=f"fleet key file (default {fleetkey.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--lan-proxy",
        metavar="ADDR:PORT",
        help="relay ADDR:PORT to the local Ollama, accepting only the router",
    )
    parser.add_argument(
        "--name", help="node name announced to the router (default: host name)"
    )
    parser.add_argument(
        "--advertise",
        metavar="URL",
        help="URL the router should use for this node (default: derived)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help=f"seconds between heartbeats (default {DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--mdns-interface",
        action="append",
        metavar="NAME",
        help="look for the router on this interface only (repeatable; default: "
        "every non-loopback interface that is up)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
