"""`herd audit [verify]` and `herd traces [stats]` (see herd.cli)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from herd.cli import add_command
from herd.errors import ConfigError
from herd.ops import auditlog, output, tracequery
from herd.ops.chain import verify
from herd.settings import STATE_DIR
from herd.store import Store

AUDIT_COLUMNS = ("id", "time", "user", "action", "revision", "detail")
CHAIN_COLUMNS = ("prev_hash", "hash")
TRACE_COLUMNS = (
    "id", "time", "ts", "client", "route", "method", "requested_model",
    "served_model", "node", "status", "queue_ms", "ttft_ms", "duration_ms",
    "tokens_in", "tokens_out", "retries", "error_class", "tags",
)  # fmt: skip
STATS_COLUMNS = (
    "count", "errors", "error_rate", "ttft_p50_ms", "ttft_p95_ms",
    "duration_p50_ms", "duration_p95_ms", "tokens_in", "tokens_out",
)  # fmt: skip


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `audit` and `traces`."""
    p = add_command(
        sub,
        "audit",
        cmd_audit,
        parents=[common],
        help="list admin events, or verify the audit log's hash chain",
        examples="""\
  herd audit                              the last 7 days of admin events
  herd audit --since 30d --action apply --action rollback
  herd audit --action node. --csv > pulls.csv      every node.* event
  herd audit --since 2026-11-01 --until 2026-12-01 --json
  herd audit verify                       check the chain; exit 1 names the first
                                          row altered, deleted or inserted by hand
--since/--until: a duration back from now (30m, 24h, 7d) or a UTC date/time""",
    )
    p.add_argument(
        "verb",
        nargs="?",
        choices=["verify"],
        metavar="verify",
        help="recompute the hash chain instead of listing events",
    )
    _window_args(p, "7d")
    p.add_argument(
        "--action",
        action="append",
        default=[],
        metavar="ACTION",
        help="only this action (repeatable; 'node.' matches every node.* action)",
    )
    _format_args(p)

    p = add_command(
        sub,
        "traces",
        cmd_traces,
        parents=[common],
        help="list request traces, or summarize them per model, node, group and tag",
        examples="""\
  herd traces                             the last hour's requests (newest 200)
  herd traces --tag app:wiki --status error --since 24h
  herd traces --model llama3.2:3b --limit 0 --csv > traces.csv
  herd traces stats                       count, error rate, p50/p95 TTFT and
                                          duration per model, node, group and tag
  herd traces stats --by tag --since 7d --json
traces hold numbers and names only, never prompt or reply text""",
    )
    p.add_argument(
        "verb",
        nargs="?",
        choices=["stats"],
        metavar="stats",
        help="summarize instead of listing",
    )
    _window_args(p, "1h (stats: 24h)")
    p.add_argument("--group", metavar="NAME", help="only this client group")
    p.add_argument("--tag", metavar="TAG", help="only requests carrying this tag")
    p.add_argument("--model", metavar="NAME", help="only this model (as served)")
    p.add_argument(
        "--status", metavar="S", help="a code (404), a class (5xx), ok or error"
    )
    p.add_argument(
        "--by",
        action="append",
        choices=tracequery.DIMENSIONS,
        help="stats: group by this only (repeatable; default all four)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=200,
        metavar="N",
        help="list at most the newest N traces (0: all; default 200)",
    )
    _format_args(p)


def _window_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--since", metavar="WHEN", help=f"from this time (default {default})"
    )
    p.add_argument("--until", metavar="WHEN", help="before this time (default now)")


def _format_args(p: argparse.ArgumentParser) -> None:
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV with a header")


# -- audit ----------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    store = Store(STATE_DIR.resolve(args.state_dir), create=False)
    try:
        if args.verb == "verify":
            if args.since or args.until or args.action or args.csv:
                raise ConfigError(
                    "verify checks the whole chain: it takes no --since, --until, "
                    "--action or --csv"
                )
            return _verify(store, args.json)
        start, end = output.window(args.since, args.until, "7d")
        rows = auditlog.select(
            store.db,
            since=output.iso(start) if start else None,
            until=output.iso(end) if end else None,
            actions=tuple(args.action),
        )
    finally:
        store.close()
    for row in rows:
        row["detail"] = _detail(row["detail"])
    if args.json:
        output.write_json(rows)
    elif args.csv:
        output.write_csv(rows, AUDIT_COLUMNS + CHAIN_COLUMNS)
    elif not rows:
        print("no audit events in this window (try --since 90d)", file=sys.stderr)
    else:
        output.table(
            [
                [r[c] if c != "detail" else _compact(r[c]) for c in AUDIT_COLUMNS]
                for r in rows
            ],
            AUDIT_COLUMNS,
        )
    return 0


def _detail(text: Any) -> Any:
    """A row's detail as an object (as stored when it is not JSON)."""
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


def _compact(detail: Any) -> str:
    if isinstance(detail, dict):
        return " ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
            for k, v in detail.items()
        )
    return str(detail)


def _verify(store: Store, as_json: bool) -> int:
    verdict = verify(auditlog.chain(store.db), auditlog.anchor(store.db))
    if as_json:
        output.write_json(verdict.as_dict())
        return 0 if verdict.intact else 1
    if not verdict.intact:
        print(
            f"herd audit verify: audit row {verdict.broken_id} breaks the chain: "
            f"{verdict.reason}",
            file=sys.stderr,
        )
        return 1
    if verdict.rows == 0:
        print("audit chain intact: no audit rows yet")
        return 0
    print(
        f"audit chain intact: {verdict.rows} rows ({verdict.first_id}.."
        f"{verdict.last_id}); head row {verdict.last_id} hash {verdict.head_hash}"
    )
    if verdict.anchor:
        print(
            f"pruned before row {verdict.anchor.first_id}; "
            f"anchor {verdict.anchor.prev_hash}"
        )
    return 0


# -- traces ---------------------------------------------------------------


def cmd_traces(args: argparse.Namespace) -> int:
    stats = args.verb == "stats"
    if args.limit < 0:
        raise ConfigError(f"--limit {args.limit}: must be 0 (all) or more")
    start, end = output.window(args.since, args.until, "24h" if stats else "1h")
    filters = tracequery.Filters(
        since=start.timestamp() if start else None,
        until=end.timestamp() if end else None,
        group=args.group,
        tag=args.tag,
        model=args.model,
        status=args.status,
    )
    conn = tracequery.open_traces(STATE_DIR.resolve(args.state_dir))
    try:
        if stats:
            dims = tuple(dict.fromkeys(args.by or tracequery.DIMENSIONS))
            result = tracequery.stats(conn, filters, dims)
        else:
            rows = tracequery.rows(conn, filters, args.limit or None)
    finally:
        conn.close()
    window = {
        "since": output.iso(start) if start else None,
        "until": output.iso(end) if end else None,
    }
    if stats:
        return _print_stats(args, window, result)
    if args.json:
        output.write_json(rows)
    elif args.csv:
        output.write_csv(rows, TRACE_COLUMNS)
    elif not rows:
        print("no traces match (try --since 24h)", file=sys.stderr)
    else:
        header = (
            "time",
            "group",
            "route",
            "model",
            "node",
            "status",
            "ttft_ms",
            "duration_ms",
            "in",
            "out",
            "tags",
        )
        output.table(
            [
                [
                    r["time"], r["client"], r["route"],
                    r["served_model"] or r["requested_model"], r["node"],
                    r["status"], r["ttft_ms"], r["duration_ms"],
                    r["tokens_in"], r["tokens_out"], r["tags"],
                ]
                for r in rows
            ],
            header,
        )  # fmt: skip
    return 0


def _print_stats(
    args: argparse.Namespace, window: dict[str, Any], result: dict[str, Any]
) -> int:
    if args.json:
        output.write_json({**window, **result})
        return 0
    if args.csv:
        flat = [{"dimension": "total", "key": "", **result["total"]}]
        for dimension, entries in result["by"].items():
            flat += [{"dimension": dimension, **entry} for entry in entries]
        output.write_csv(flat, ("dimension", "key", *STATS_COLUMNS))
        return 0
    total = result["total"]
    print(
        f"{total['count']} requests, {total['errors']} errors "
        f"({total['error_rate']:.1%}) since {window['since']}"
    )
    header = (
        "count",
        "err%",
        "ttft p50",
        "ttft p95",
        "dur p50",
        "dur p95",
        "in",
        "out",
    )
    for dimension, entries in result["by"].items():
        print()
        output.table(
            [
                [
                    e["key"], e["count"], round(e["error_rate"] * 100, 1),
                    e["ttft_p50_ms"], e["ttft_p95_ms"], e["duration_p50_ms"],
                    e["duration_p95_ms"], e["tokens_in"], e["tokens_out"],
                ]
                for e in entries
            ],
            (dimension, *header),
        )  # fmt: skip
    return 0
