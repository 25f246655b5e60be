"""`deepseek-ollama-bridge keys create|list|update|revoke|usage`: managing shared mode's
client keys, and reading what they spent (`bridge.usage`).

Works on the key store in `--state-dir`/`BRIDGE_STATE_DIR`, the same setting the server
reads, while the bridge runs or not; a change reaches every worker on its next request.
With `--redis-url`/`BRIDGE_REDIS_URL`, `revoke` also stamps the key in Redis, so every
instance refuses it within a second, and `usage` reads the fleet's sums there.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from bridge.core import redis_link
from bridge.core import settings as bridge_settings
from bridge.core.exchange import Budget
from bridge.core.tables import columns
from bridge.shared_mode.keystore import (
    ClientKey,
    KeyStore,
    KeyStoreError,
    parse_budget,
    parse_expiry,
    parse_rate,
)
from bridge.shared_mode.redis_stamps import revocation_stamps
from bridge.usage import report

STORE_SETTINGS = ("state_dir", "redis_url", "redis_prefix")
# flags of `keys usage` only: the server's, for the instance-wide default budget
USAGE_SETTINGS = ("usage_retention_days", "budget_tokens", "budget_period")


def _budget_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--budget-tokens", metavar="N", dest="key_budget_tokens",
                        required=required, help="token budget (prompt + completion of "
                        "upstream calls; cache hits are free) per period; 0 = none")
    parser.add_argument("--budget-period", choices=bridge_settings.BUDGET_PERIODS,
                        dest="key_budget_period",
                        help="the budget's period in UTC (week: from Monday; month: "
                        "calendar month); default month")


def build_parser() -> argparse.ArgumentParser:
    parser, commands = bridge_settings.tool_parser(
        "keys", "Manage the client keys of shared mode (stored only as hashes).",
        STORE_SETTINGS)
    create = commands.add_parser("create", help="issue a key and print it (only this once)")
    create.add_argument("name", help="the key's name: 1-64 of A-Z a-z 0-9 . _ -; shown in "
                        "metrics and logs")
    create.add_argument("--expires", metavar="WHEN",
                        help="expiry: a duration (90s, 30m, 12h, 30d, 2w) or an ISO date/time")
    create.add_argument("--rate", metavar="N[/min|/s]",
                        help="requests allowed per minute (N or N/min) or per second (N/s)")
    create.add_argument("--models", metavar="A,B",
                        help="the only models this key may use (comma-separated)")
    _budget_flags(create, required=False)
    commands.add_parser("list", help="list the keys (never the keys themselves)")
    update = commands.add_parser("update", help="change a key's budget; applied by every "
                                 "worker on its next request, no restart")
    update.add_argument("name")
    _budget_flags(update, required=True)
    usage = commands.add_parser("usage", help="tokens, requests and cache savings per key "
                                "and model, and each budget's current period")
    usage.add_argument("name", nargs="?", help="only this key (or credential digest)")
    usage.add_argument("--since", metavar="YYYY-MM-DD", type=report.valid_day,
                       help="first UTC day shown (default: the first of this month)")
    usage.add_argument("--json", action="store_true", help="print JSON")
    bridge_settings.add_arguments(usage, USAGE_SETTINGS)
    revoke = commands.add_parser("revoke", help="revoke a key; refused on every worker "
                                 "within a second, no restart")
    revoke.add_argument("name")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args, state = bridge_settings.tool_args(parser, argv, STORE_SETTINGS + USAGE_SETTINGS)
    try:
        if args.command == "create":
            return create(state.state_dir, args)
        if args.command == "usage":
            now = time.time()
            found = report.usage_report(state, args.name, args.since or report.month_start(now),
                                        now, redis_link.TOOL_TIMEOUT)
            print(report.as_json(found) if args.json else report.text(found))
            return 0
        # with --redis-url, a revocation is shared with every instance
        store = KeyStore(state.state_dir, revocation_stamps(state, redis_link.TOOL_TIMEOUT))
        if args.command == "list" and not store.path.exists():
            print(f"no client keys yet (no key store at {store.path})", file=sys.stderr)
            return 0
        with store.open(create=False):
            if args.command == "list":
                print(table(store.all()))
            elif args.command == "update":
                key = store.set_budget(args.name, _budget(args))
                print(f"key {key.name!r}: budget {key.budget_text or 'none'}", file=sys.stderr)
            else:
                key = store.revoke(args.name)
                print(f"revoked key {key.name!r}", file=sys.stderr)
        return 0
    except KeyStoreError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1


def create(state_dir: str, args: argparse.Namespace) -> int:
    expires = parse_expiry(args.expires) if args.expires else None
    rate = parse_rate(args.rate) if args.rate else None
    models = args.models.split(",") if args.models is not None else None
    budget = _budget(args) if args.key_budget_tokens is not None else None
    with KeyStore(state_dir) as store:
        raw, key = store.create(args.name, expires=expires, rate=rate, models=models,
                                budget=budget)
    print(raw)
    print(f"created key {key.name!r}; it is shown only this once", file=sys.stderr)
    return 0


def _budget(args: argparse.Namespace) -> Budget | None:
    return parse_budget(args.key_budget_tokens, args.key_budget_period)


def _when(moment: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)) if moment else "-"


def table(keys: list[ClientKey]) -> str:
    rows = [("NAME", "KEY", "STATUS", "CREATED", "EXPIRES", "RATE", "MODELS", "BUDGET")]
    for key in keys:
        rows.append((key.name, key.hint, key.status(), _when(key.created), _when(key.expires),
                     key.rate_text or "-", ",".join(key.models) if key.models else "all",
                     key.budget_text or "-"))
    return columns(rows)
