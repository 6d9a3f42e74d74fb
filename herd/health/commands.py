"""`herd health`: the health engine's findings, for people and monitoring scripts.

Asks the running router (GET /dashboard/api/health, as `herd status` asks
/fleet/status); when it does not answer, computes what the state directory
alone can tell (applied revision, traces.db, the scrub's last results) and
reports every node fact as unknown. Exits 1 on any critical finding.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from herd.errors import ConfigError
from herd.settings import ROUTER_TOKEN, STATE_DIR

PATH = "/dashboard/api/health"
TIMEOUT_S = 5.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, token: str | None) -> dict[str, Any] | None:
    """The router's findings; None when it does not answer. A refusal (403:
    not an operator group) is an error, not a reason to guess offline."""
    request = urllib.request.Request(url.rstrip("/") + PATH)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _DIRECT.open(request, timeout=TIMEOUT_S) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as ex:
        try:
            detail = json.loads(ex.read()).get("error")
        except (OSError, ValueError, AttributeError):
            detail = None
        if isinstance(detail, dict):
            detail = detail.get("message")
        if ex.code in (401, 403):
            raise ConfigError(
                f"the router at {url} refused {PATH} ({ex.code}): "
                f"{detail or 'not an operator client group'}; pass --token of an "
                "operator group"
            ) from None
        if ex.code == 404:
            return None  # a router from before the health engine
        raise ConfigError(f"the router at {url} answered {ex.code}: {detail}") from None
    except (OSError, ValueError):
        return None


def offline(state_dir: str) -> dict[str, Any]:
    """Findings from the state directory alone."""
    from herd.bundle.policy import store_path
    from herd.health import checks
    from herd.health.gather import offline_snapshot
    from herd.router.commands import _served_fleet

    fleet, _ = _served_fleet(state_dir)
    try:
        store = store_path(Path(state_dir))
    except Exception:  # noqa: BLE001 - unknown store: the scrub facts say so
        store = None
    return checks.run(offline_snapshot(state_dir, fleet, store))


def findings(state_dir: str, router: str | None, token: str | None) -> dict[str, Any]:
    """The live router's findings, else the offline ones (`source` says which)."""
    from herd.router import report
    from herd.router.commands import _addressed, _served_fleet

    fleet, _ = _served_fleet(state_dir)
    url = _addressed(router or report.local_url(fleet.router.listen))
    live = fetch(url, token)
    if live is not None:
        live["source"] = f"live router {url}"
        return live
    result = offline(state_dir)
    result["source"] = "state directory (router not reachable)"
    return result


def render(result: dict[str, Any]) -> str:
    counts = result.get("counts", {})
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [
        f"health of fleet {result.get('fleet')}: {result.get('status', '?').upper()} "
        f"({summary or 'all checks pass'})  [{result.get('source')}]",
    ]
    for f in result.get("findings", []):
        lines.append(f"{f['severity'].upper():<9} {f['id']:<13} {f['finding']}")
        lines.append(f"{'':<23} -> {f['action']}")
    if result.get("passed"):
        lines.append("passed: " + ", ".join(result["passed"]))
    return "\n".join(lines)


def health(args: argparse.Namespace) -> int:
    """Print the findings; exit 1 when any is critical."""
    from herd.cli import print_json

    state_dir = str(STATE_DIR.resolve(args.state_dir))
    result = findings(state_dir, args.router, ROUTER_TOKEN.resolve(args.token))
    if args.json:
        print_json(result)
    else:
        print(render(result))
    return 1 if result.get("counts", {}).get("critical") else 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `herd health` to the `herd` parser."""
    from herd.cli import add_command

    parser = add_command(
        sub,
        "health",
        health,
        help="run the health checks (nodes, models, errors, latency, queues, "
        "revision, clocks, bundle store); exit 1 on any critical finding",
        examples="""\
  herd health                          ask the local router, else the state dir
  herd health --json                   machine-readable findings
  herd health || page-oncall           exit status 1 means a critical finding
  herd health --router http://10.0.0.5:11435 --token $OPS_TOKEN""",
        parents=[common],
        json_flag=True,
    )
    parser.add_argument(
        "--router", help="router URL (default: router.listen of the manifest)"
    )
    ROUTER_TOKEN.add_to(parser)
