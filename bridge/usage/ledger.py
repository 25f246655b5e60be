"""The usage ledger's local record: daily rows in SQLite, `usage.sqlite3` in `--state-dir`.

One row per (UTC day, principal, model) with the counts of `FIELDS`. Workers add their
batches with one upsert per row in one short transaction (the file is shared by every
worker of the instance, and by the `keys usage` command); rows older than the retention
(`--usage-retention-days`) are deleted at most once an hour. Every method blocks: the
recorder calls them in its own thread (`bridge.core.offloop`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from bridge.usage.periods import today

FILE_NAME = "usage.sqlite3"
BUSY_TIMEOUT = 5.0
SWEEP_SECONDS = 3600.0
# the counts of a row, in order; all whole numbers but the seconds saved
FIELDS = ("requests", "prompt_tokens", "completion_tokens", "estimated", "cache_hits",
          "saved_tokens", "saved_seconds")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS usage_daily (
    day TEXT NOT NULL,
    principal TEXT NOT NULL,
    model TEXT NOT NULL,
    {", ".join(f"{name} {'REAL' if name == 'saved_seconds' else 'INTEGER'} NOT NULL DEFAULT 0"
               for name in FIELDS)},
    PRIMARY KEY (day, principal, model)
) WITHOUT ROWID;
"""
_UPSERT = (f"INSERT INTO usage_daily (day, principal, model, {', '.join(FIELDS)}) "
           f"VALUES (?, ?, ?, {', '.join('?' for _ in FIELDS)}) "
           "ON CONFLICT (day, principal, model) DO UPDATE SET "
           + ", ".join(f"{name} = {name} + excluded.{name}" for name in FIELDS))

RowKey = tuple[str, str, str]  # (day as YYYY-MM-DD, principal, model)
Counts = list[float]  # in the order of FIELDS
# where a row's upstream tokens are in its counts
PROMPT, COMPLETION = FIELDS.index("prompt_tokens"), FIELDS.index("completion_tokens")


def upstream_tokens(counts: Sequence[float]) -> int:
    """Tokens spent upstream (prompt + completion) of a row's counts: what a budget counts."""
    return int(counts[PROMPT] + counts[COMPLETION])


class Row(NamedTuple):
    day: str
    principal: str
    model: str
    counts: tuple[float, ...]

    @property
    def tokens(self) -> int:
        """Tokens spent upstream: what a budget counts."""
        return upstream_tokens(self.counts)


def empty() -> Counts:
    return [0] * len(FIELDS)


def add_into(total: Counts, counts: Iterable[float]) -> None:
    for index, value in enumerate(counts):
        total[index] += value


class LocalLedger:
    def __init__(self, state_dir: str | os.PathLike, retention_days: int):
        self.path = Path(state_dir) / FILE_NAME
        self.retention_days = retention_days
        self._db: sqlite3.Connection | None = None
        self._swept = 0.0

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fresh = not self.path.exists()
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                 check_same_thread=False)
            if fresh:
                os.chmod(self.path, 0o600)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def add(self, batch: dict[RowKey, Counts], now: float | None = None) -> None:
        """Add a batch of rows (one short transaction), and drop expired rows hourly."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_UPSERT, [(*key, *counts) for key, counts in batch.items()])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        now = time.time() if now is None else now
        if now - self._swept > SWEEP_SECONDS:
            self._swept = now
            db.execute("DELETE FROM usage_daily WHERE day < ?", (self.oldest_kept(now),))

    def oldest_kept(self, now: float) -> str:
        return (today(now) - timedelta(days=self.retention_days)).isoformat()

    def rows(self, since: str, principal: str | None = None) -> list[Row]:
        """The rows of `since` (YYYY-MM-DD) and after, of one principal or all."""
        query = f"SELECT day, principal, model, {', '.join(FIELDS)} FROM usage_daily " \
                "WHERE day >= ?"
        args: tuple[str, ...] = (since,)
        if principal is not None:
            query += " AND principal = ?"
            args += (principal,)
        return [Row(found[0], found[1], found[2], tuple(found[3:]))
                for found in self.db.execute(query + " ORDER BY day, principal, model", args)]

    def spent_since(self, since: str) -> dict[str, int]:
        """Upstream tokens per principal from `since` (YYYY-MM-DD) on: one indexed range."""
        return {principal: int(tokens) for principal, tokens in self.db.execute(
            "SELECT principal, SUM(prompt_tokens + completion_tokens) FROM usage_daily "
            "WHERE day >= ? GROUP BY principal", (since,))}
