"""The fleet's usage in Redis (`--redis-url`): every instance adds its batches there.

- `<prefix>:usage:day:<YYYY-MM-DD>`: a hash per UTC day, field `principal TAB model TAB
  count` → the sum (HINCRBY, HINCRBYFLOAT for seconds), expiring after the retention.
- `<prefix>:usage:spent:<period>:<first day>`: a hash per current day, week and month,
  principal → upstream tokens, so a budget's total is one field of one hash.

A batch is one pipeline (MULTI/EXEC: all of it or nothing). While Redis is down, the
recorder keeps the batches (bounded) and adds them when it answers again.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Iterable

from bridge.core.redis_link import Link
from bridge.usage import periods
from bridge.usage.ledger import FIELDS, Counts, Row, RowKey, empty, upstream_tokens

SEPARATOR = "\t"


def _field(principal: str, model: str, name: str) -> str:
    return SEPARATOR.join((principal, model, name))


class RedisLedger:
    def __init__(self, link: Link, retention_days: int):
        self.link = link
        self.retention_days = retention_days

    def day_key(self, day: str) -> str:
        return self.link.key("usage", "day", day)

    def spent_key(self, period: str, first: date) -> str:
        return self.link.key("usage", "spent", period, first.isoformat())

    def add(self, batch: dict[RowKey, Counts], now: float) -> None:
        """Add a batch (RedisDown when Redis fails: nothing of it was added)."""
        def write(client):  # noqa: ANN001, ANN202 - a redis.Redis
            pipe = client.pipeline(transaction=True)
            spent: dict[str, int] = {}
            for (day, principal, model), counts in batch.items():
                key = self.day_key(day)
                for name, value in zip(FIELDS, counts, strict=True):
                    if not value:
                        continue
                    if name == "saved_seconds":
                        pipe.hincrbyfloat(key, _field(principal, model, name), value)
                    else:
                        pipe.hincrby(key, _field(principal, model, name), int(value))
                pipe.expire(key, (self.retention_days + 1) * periods.DAY_SECONDS)
                tokens = upstream_tokens(counts)
                if tokens:
                    spent[principal] = spent.get(principal, 0) + tokens
            for period in periods.PERIODS:
                key = self.spent_key(period, periods.start(period, now))
                for principal, tokens in spent.items():
                    pipe.hincrby(key, principal, tokens)
                if spent:
                    left = periods.seconds_left(period, now)
                    pipe.expire(key, int(left) + periods.DAY_SECONDS)
            pipe.execute()
        self.link.run(write)

    def spent(self, now: float) -> dict[str, dict[str, int]]:
        """Upstream tokens per principal in the current period, by period: one round trip."""
        def read(client):  # noqa: ANN001, ANN202
            pipe = client.pipeline(transaction=False)
            for period in periods.PERIODS:
                pipe.hgetall(self.spent_key(period, periods.start(period, now)))
            return pipe.execute()
        found = self.link.run(read)
        return {period: {name.decode(): int(value) for name, value in sums.items()}
                for period, sums in zip(periods.PERIODS, found, strict=True)}

    def rows(self, since: str, now: float, principal: str | None = None) -> list[Row]:
        """The daily rows from `since` to today (one HGETALL per day, in one pipeline)."""
        first = max(date.fromisoformat(since),
                    periods.today(now) - timedelta(days=self.retention_days))
        days = [(first + timedelta(days=offset)).isoformat()
                for offset in range((periods.today(now) - first).days + 1)]

        def read(client):  # noqa: ANN001, ANN202
            pipe = client.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(self.day_key(day))
            return pipe.execute()
        return list(_rows(zip(days, self.link.run(read), strict=True), principal))


def _rows(found: Iterable[tuple[str, dict[bytes, bytes]]], principal: str | None
          ) -> Iterable[Row]:
    for day, fields in found:
        rows: dict[tuple[str, str], Counts] = {}
        for raw, value in fields.items():
            who, rest = raw.decode().split(SEPARATOR, 1)
            model, name = rest.rsplit(SEPARATOR, 1)
            if (principal is not None and who != principal) or name not in FIELDS:
                continue
            counts = rows.setdefault((who, model), empty())
            counts[FIELDS.index(name)] = float(value) if name == "saved_seconds" \
                else int(value)
        for (who, model), counts in sorted(rows.items()):
            yield Row(day, who, model, tuple(counts))
