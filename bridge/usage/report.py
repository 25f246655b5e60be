"""Reading the ledger: `keys usage` (per principal and model since a day) and the
`usage` section of `/status` (per principal, the current period with its budget).

Both read the fleet's sums in Redis with `--redis-url` (the state directory's file when
Redis is down), else the state directory's file. Budgets come from the key store (a
key's own) or the instance-wide default.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from datetime import date
from typing import Any, Iterable

from bridge.core.exchange import Budget
from bridge.core.offloop import SerialThread
from bridge.core.redis_link import RedisDown, link_for
from bridge.core.settings import Settings
from bridge.core.tables import columns
from bridge.shared_mode.keystore import KeyStore, KeyStoreError
from bridge.usage import periods
from bridge.usage.ledger import FIELDS, LocalLedger, Row, add_into, empty
from bridge.usage.redis_ledger import RedisLedger

log = logging.getLogger("bridge.usage")

TOP_MODELS = 5
STATUS_SECONDS = 1.5  # how long a worker keeps its `/status` section
DEFAULT_PERIOD = "day"  # the period shown for principals without a budget


def read_rows(settings: Settings, since: str, now: float, principal: str | None = None,
              timeout: float | None = None) -> list[Row]:
    """The daily rows from `since` on: the fleet's with Redis, else (or while Redis is
    down) this instance's."""
    try:
        return fleet_rows(settings, since, now, principal, timeout)
    except RedisDown as exc:
        log.warning("usage: Redis unreachable (%s); reading this instance's ledger", exc)
    except LookupError:  # no Redis
        pass
    local = LocalLedger(settings.state_dir, settings.usage_retention_days)
    try:
        return local_rows(local, since, principal)
    finally:
        local.close()


def fleet_rows(settings: Settings, since: str, now: float, principal: str | None = None,
               timeout: float | None = None) -> list[Row]:
    """The fleet's rows in Redis: LookupError without `--redis-url`, RedisDown when it
    fails."""
    link = link_for(settings, timeout)
    if link is None:
        raise LookupError("no --redis-url")
    return RedisLedger(link, settings.usage_retention_days).rows(since, now, principal)


def local_rows(local: LocalLedger, since: str, principal: str | None = None) -> list[Row]:
    """This instance's rows, in the state directory's file (blocking: off the loop);
    none before the file exists."""
    return local.rows(since, principal) if local.path.exists() else []


def default_budget(settings: Settings) -> Budget | None:
    """The instance-wide budget (`--budget-tokens`, `--budget-period`) of principals
    without one of their own."""
    return Budget(settings.budget_tokens, settings.budget_period) \
        if settings.budget_tokens else None


def key_budgets(store: KeyStore) -> dict[str, Budget]:
    """The budgets of the store's keys that have one (revoked keys too: their usage
    stays); none before the store exists. Opens the store if it is not open."""
    if not store.path.exists():
        return {}
    try:
        keys = store.open(create=False).keys()  # re-read only when the store changed
    except KeyStoreError as exc:
        log.warning("usage: %s", exc)
        return {}
    return {key.name: key.budget for key in keys if key.budget is not None}


def in_period(budget: Budget | None, rows: Iterable[Row], now: float) -> list[Row]:
    """The rows of the budget's current period (the default period's without a budget)."""
    first = periods.start(budget.period if budget else DEFAULT_PERIOD, now).isoformat()
    return [row for row in rows if row.day >= first]


def budget_figures(budget: Budget | None, current: Iterable[Row], now: float
                   ) -> dict[str, Any]:
    """A principal's budget, and its upstream tokens in `current`, the rows of the
    budget's current period (`in_period`)."""
    period = budget.period if budget else DEFAULT_PERIOD
    used = sum(row.tokens for row in current)
    return {"budget_tokens": budget.tokens if budget else None,
            "budget_period": budget.period if budget else None, "used_tokens": used,
            "remaining_tokens": max(0, budget.tokens - used) if budget else None,
            "resets": periods.end(period, now).isoformat()}


def earliest_period_start(now: float) -> str:
    return min(periods.start(period, now) for period in periods.PERIODS).isoformat()


def status_items(rows: list[Row], budgets: dict[str, Budget], default: Budget | None,
                 now: float) -> list[dict[str, Any]]:
    """`/status`'s `usage`: one item per principal active in its current period or with
    a budget, biggest spender first."""
    by_principal: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_principal[row.principal].append(row)
    items = []
    for principal in set(by_principal) | set(budgets):
        budget = budgets.get(principal, default)
        current = in_period(budget, by_principal.get(principal, ()), now)
        if not current and principal not in budgets:
            continue
        figures = budget_figures(budget, current, now)
        totals = empty()
        models: dict[str, int] = defaultdict(int)
        for row in current:
            add_into(totals, row.counts)
            models[row.model] += row.tokens
        figures.pop("resets")
        items.append({"key": principal, **figures,
                      "requests": int(totals[FIELDS.index("requests")]),
                      "cache_hits": int(totals[FIELDS.index("cache_hits")]),
                      "saved_tokens": int(totals[FIELDS.index("saved_tokens")]),
                      "saved_seconds": round(totals[FIELDS.index("saved_seconds")], 3),
                      "top_models": [{"model": model, "tokens": tokens} for model, tokens in
                                     sorted(models.items(), key=lambda item: -item[1])
                                     [:TOP_MODELS]]})
    return sorted(items, key=lambda item: (-item["used_tokens"], item["key"]))


class StatusSection:
    """`/status`'s `usage`, read off the event loop and kept `STATUS_SECONDS` per worker
    (the console polls every second or two)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.default = default_budget(settings)
        self.thread = SerialThread()
        # opened in the thread on first use and kept (as the key store is by the auth
        # stage): a refresh is then a query, not a new connection and schema script each
        self.local = LocalLedger(settings.state_dir, settings.usage_retention_days)
        self.store = KeyStore(settings.state_dir) if settings.enable_shared_mode else None
        self._kept: tuple[float, list[dict[str, Any]]] = (0.0, [])

    def get(self) -> list[dict[str, Any]]:
        if self.settings.disable_usage_ledger:
            return []
        now = time.time()
        if now - self._kept[0] < STATUS_SECONDS:
            return self._kept[1]
        since = earliest_period_start(now)
        budgets = self.thread.run(key_budgets, self.store) if self.store is not None else {}
        try:
            rows = fleet_rows(self.settings, since, now)  # cooperative under gevent
        except (LookupError, RedisDown):
            rows = self.thread.run(local_rows, self.local, since)
        self._kept = (now, status_items(rows, budgets, self.default, now))
        return self._kept[1]


# --- `keys usage` ------------------------------------------------------------------------

def usage_rows(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Per principal and model, the sums over the days read."""
    sums: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        add_into(sums.setdefault((row.principal, row.model), empty()), row.counts)
    return [{"key": principal, "model": model,
             **{name: round(value, 3) if name == "saved_seconds" else int(value)
                for name, value in zip(FIELDS, counts, strict=True)}}
            for (principal, model), counts in sorted(sums.items())]


def usage_report(settings: Settings, name: str | None, since: str, now: float,
                 timeout: float) -> dict[str, Any]:
    """What `keys usage [NAME] --since DAY` shows: per key and model, and per key its
    budget in the current period (its own, else the instance-wide default that the
    command reads as the server does: `--budget-tokens`, `BRIDGE_BUDGET_TOKENS`)."""
    store = KeyStore(settings.state_dir)
    try:
        budgets = key_budgets(store)
    finally:
        store.close()
    default = default_budget(settings)
    rows = read_rows(settings, min(since, earliest_period_start(now)), now, name, timeout)
    shown = [row for row in rows if row.day >= since]
    principals = sorted({row.principal for row in rows} | (
        set(budgets) if name is None else {name} & set(budgets)))

    def current(principal: str) -> dict[str, Any]:
        budget = budgets.get(principal, default)
        own = [row for row in rows if row.principal == principal]
        return {"key": principal, **budget_figures(budget, in_period(budget, own, now), now)}
    return {"since": since, "usage": usage_rows(shown),
            "budgets": [current(principal) for principal in principals]}


def text(report: dict[str, Any]) -> str:
    if not report["usage"] and not report["budgets"]:
        return f"no usage since {report['since']}"
    usage = [("KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "ESTIMATED", "CACHE_HITS",
              "SAVED_TOKENS", "SAVED_SECONDS")]
    usage += [(item["key"], item["model"], *(str(item[name]) for name in FIELDS))
              for item in report["usage"]]
    budgets = [("KEY", "BUDGET", "USED", "REMAINING", "RESETS")]
    budgets += [(item["key"], f"{item['budget_tokens']}/{item['budget_period']}"
                 if item["budget_tokens"] else "-", str(item["used_tokens"]),
                 str(item["remaining_tokens"]) if item["remaining_tokens"] is not None else "-",
                 item["resets"]) for item in report["budgets"]]
    return (f"usage since {report['since']} (UTC days):\n{columns(usage)}\n\n"
            f"current period:\n{columns(budgets)}")


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def month_start(now: float) -> str:
    return periods.start("month", now).isoformat()


def valid_day(text_: str) -> str:
    """A `--since` day as YYYY-MM-DD; else the one line argparse shows."""
    try:
        return date.fromisoformat(text_).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad day {text_!r}: give a UTC day as YYYY-MM-DD, e.g. 2026-01-31") from None
