"""Per worker: exchanges added up in memory, flushed to the ledger every `FLUSH_SECONDS`.

The usage stage says what an exchange spent and saved as additive events (`EVENTS`:
`usage.<field>`, labelled with the principal and the model), so that the repeats the
fast path answers before the pipeline (`bridge.web.fast_hits`, which emits a kept
answer's additive events again, added up) are counted as the first one was. The recorder
listens to them and only adds to a dict on the event loop; a background greenlet swaps
the batch out every second and writes it off the loop: into the state directory's SQLite
file in the worker's own native thread (`bridge.core.offloop`), and with `--redis-url`
into Redis (whose calls are cooperative). A crash loses at most the last second of a
worker's usage; a stopping worker flushes what it holds. While Redis is down the batches
wait (up to `MAX_UNSHARED_ROWS` rows, then they are dropped with a warning: the local
file still has them) and are added when Redis answers again.

Where a budget may apply (`--budget-tokens`, or keys' own in shared mode), the worker
re-reads after each flush the totals of the current day, week and month per principal
(one Redis round trip, or three indexed SQLite ranges), so that a budget check is one
dict lookup: those totals plus what this worker holds unflushed.
"""

from __future__ import annotations

import logging
import sqlite3
import time

import gevent

from bridge.core import events
from bridge.core.lifecycle import repeat
from bridge.core.offloop import SerialThread
from bridge.core.redis_link import RedisDown, link_for
from bridge.core.settings import Settings
from bridge.usage import periods
from bridge.usage.ledger import (
    COMPLETION,
    FIELDS,
    PROMPT,
    Counts,
    LocalLedger,
    RowKey,
    add_into,
    empty,
    upstream_tokens,
)
from bridge.usage.redis_ledger import RedisLedger
from bridge.usage.report import default_budget

log = logging.getLogger("bridge.usage")

FLUSH_SECONDS = 1.0
MAX_UNSHARED_ROWS = 100_000
EVENTS = {f"usage.{field}": index for index, field in enumerate(FIELDS)}


class Recorder:
    def __init__(self, settings: Settings):
        self.local = LocalLedger(settings.state_dir, settings.usage_retention_days)
        link = link_for(settings)
        self.fleet = RedisLedger(link, settings.usage_retention_days) if link else None
        self.thread = SerialThread()
        self.pending: dict[RowKey, Counts] = {}
        self.pending_tokens: dict[str, int] = {}  # unflushed upstream tokens per principal
        self.unshared: dict[RowKey, Counts] = {}  # flushed locally, not yet into Redis
        self.spent: dict[str, dict[str, int]] = {period: {} for period in periods.PERIODS}
        # only budgets read the totals: the instance-wide one, or keys' own (shared mode)
        self.budgets = default_budget(settings) is not None or settings.enable_shared_mode
        self._greenlet: gevent.Greenlet | None = None
        self._today = (0.0, 0.0, "")  # [from, until) in Unix time, and that UTC day

    # --- on the request path ---------------------------------------------------------

    def __call__(self, name: str, value: float, labels: dict[str, str]) -> None:
        """An event: a `usage.<field>` one is added to this worker's batch (no I/O)."""
        index = EVENTS.get(name)
        if index is None:
            return
        principal = labels["principal"]
        key = (self._day(time.time()), principal, labels["model"])
        counts = self.pending.get(key)
        if counts is None:
            counts = self.pending[key] = empty()
        counts[index] += value
        if index == PROMPT or index == COMPLETION:
            self.pending_tokens[principal] = self.pending_tokens.get(principal, 0) \
                + int(value)

    def _day(self, now: float) -> str:
        """The UTC day of `now`, as YYYY-MM-DD (worked out once a day, not per request)."""
        if not self._today[0] <= now < self._today[1]:
            first = now - now % periods.DAY_SECONDS
            self._today = (first, first + periods.DAY_SECONDS, periods.today(now).isoformat())
        return self._today[2]

    def used(self, principal: str, period: str) -> int:
        """Upstream tokens of `principal` in the current `period`, as this worker knows
        them now (the fleet's or instance's total at the last flush, plus its own since)."""
        return self.spent[period].get(principal, 0) + self.pending_tokens.get(principal, 0)

    # --- in the background -----------------------------------------------------------

    def start(self) -> None:
        """Read the totals now (a restarted worker enforces budgets from its first
        request), then flush and re-read every second in the background."""
        self._refresh(time.time())
        events.declare_additive(set(EVENTS))
        events.subscribe(self, EVENTS)
        self._greenlet = gevent.spawn(repeat, FLUSH_SECONDS, self.flush, "usage ledger flush",
                                      log)

    def stop(self) -> None:
        events.unsubscribe(self)
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        self.flush()
        self.thread.run(self.local.close)

    def flush(self, now: float | None = None) -> None:
        """Write the batch (SQLite off the loop, then Redis) and re-read the totals."""
        now = time.time() if now is None else now
        batch, self.pending = self.pending, {}
        if batch:
            try:
                self.thread.run(self.local.add, batch, now)
            except sqlite3.Error as exc:  # kept for the next flush: a lock held too long
                log.warning("cannot write the usage ledger %s: %s", self.local.path, exc)
                for key, counts in batch.items():
                    add_into(self.pending.setdefault(key, empty()), counts)
                batch = {}  # shared with the fleet once it is written here, not twice
        if self.fleet is not None:
            for key, counts in batch.items():
                add_into(self.unshared.setdefault(key, empty()), counts)
            self._share(now)
        self._refresh(now)
        self.pending_tokens = {}
        for (_, principal, _), counts in self.pending.items():  # kept after a failure
            self.pending_tokens[principal] = self.pending_tokens.get(principal, 0) \
                + upstream_tokens(counts)

    def _share(self, now: float) -> None:
        assert self.fleet is not None
        if not self.unshared:
            return
        try:
            self.fleet.add(self.unshared, now)
        except RedisDown:
            if len(self.unshared) > MAX_UNSHARED_ROWS:
                log.warning("usage ledger: Redis unreachable too long, %d rows not added to "
                            "the fleet's sums (they stay in %s)", len(self.unshared),
                            self.local.path)
                self.unshared = {}
            return
        self.unshared = {}

    def _refresh(self, now: float) -> None:
        if not self.budgets:
            return
        if self.fleet is not None:
            try:
                self.spent = self.fleet.spent(now)
                return
            except RedisDown:
                pass  # degraded: this instance's own totals
        try:
            self.spent = self.thread.run(self._local_spent, now)
        except sqlite3.Error as exc:
            log.warning("cannot read the usage ledger %s: %s", self.local.path, exc)

    def _local_spent(self, now: float) -> dict[str, dict[str, int]]:
        return {period: self.local.spent_since(periods.start(period, now).isoformat())
                for period in periods.PERIODS}
