"""The Redis tier (`--redis-url`): the cache shared by every bridge instance.

With Redis the lookup goes memory tier → Redis → upstream, and Redis also elects the one
leader of identical misses across instances (a lease per key, like the disk tier's
across workers). Entries are the disk tier's bytes (`bridge.cache.entry`: compressed
JSON after a binary creation time, never pickle), stored under `<prefix>:cache:e:<key>`
with the TTL as Redis expiry. `--cache-max-entries` bounds a sorted-set index
(`<prefix>:cache:index`, scored by creation time): a store that takes it beyond the bound
deletes the oldest entries in the same server-side script. This is not left to an
eviction policy because `maxmemory-policy` is server-wide and would also evict the
rate-limit bucket, the slot leases and the async jobs kept in the same Redis.

The local sqlitedict file stays, as the outage tier only: while Redis answers it is
neither read nor written (Redis is the one truth for TTL, purges and the bound, which a
second copy on every host would contradict after a purge made elsewhere); while Redis
is unreachable, lookups, stores and the cross-worker single flight use it, so an outage
still has a persistent tier shared by the instance's workers. What was stored there
during an outage stays there (until its TTL), not in Redis. A full Redis (`RedisFull`:
it refuses writes, still answers reads) is not an outage: lookups stay on Redis and a
store it refuses is skipped, the answer served all the same.

Purges made by `cache purge` are recorded in Redis (the last `PURGE_LOG` of them), so
every worker of every instance drops the same entries from its memory tier.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

from bridge.cache.disk import DiskTier
from bridge.cache.entry import Entry, UndecodableEntry, decode_entry, encode_entry
from bridge.cache.keys import key_model, model_prefix
from bridge.core import redis_link
from bridge.core.events import emit
from bridge.core.redis_link import Link, RedisDown, RedisFull
from bridge.core.settings import Settings

log = logging.getLogger("bridge.cache")

TIER = "redis"
HIT_REDIS, HIT_DISK = "HIT-REDIS", "HIT-DISK"
PURGE_LOG = 100        # purges remembered for the workers (they look every second)
SCAN_BATCH = 500       # index entries per Redis call in purges and statistics

# SET the entry with its expiry, index it, and delete the oldest beyond the bound.
# KEYS: entry, index. ARGV: value, ttl ms, created, max entries, index member, entry prefix.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
local evicted = 0
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #oldest, 2 do
    redis.call('DEL', ARGV[6] .. oldest[i])
    evicted = evicted + 1
  end
end
return {redis.call('ZCARD', KEYS[2]), evicted}
"""
# Take the lease when it is free, already ours (then renew it) or held by ARGV[3] (a holder
# found dead). KEYS: lease. ARGV: owner, ms, dead holder or ''. 1, else the live holder.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and holder ~= ARGV[3] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# Give the lease back only if it is still ours. KEYS: lease. ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisTier:
    """The shared tier, with the same interface as `DiskTier` (the stage and the sweeper
    use either), falling back to the local disk tier while Redis is unreachable."""

    def __init__(self, link: Link, local: DiskTier | None, ttl: float, max_entries: int):
        self.link = link
        self.local = local
        self.ttl = ttl
        self.max_entries = max_entries
        self.index = link.key("cache", "index")
        self.entry_prefix = link.key("cache", "e", "")
        self.purge_log = link.key("cache", "purges")
        self.purge_id = link.key("cache", "purge-id")
        self.owner = f"{redis_link.owner_name()}:{secrets.token_hex(4)}"
        self.opened = time.time()
        # The tier of the last hit, read by the stage right after `get` returns (no
        # greenlet switch happens in between).
        self.last_hit = HIT_REDIS
        self._claimed: dict[str, bool] = {}  # key -> claimed in Redis (else locally)
        self._put = link.script(_PUT)
        self._claim = link.script(_CLAIM)
        self._release = link.script(_RELEASE)

    def _lease(self, key: str) -> str:
        return self.link.key("cache", "flight", key)

    # --- entries ----------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        try:
            value = self.link.run(lambda client: client.get(self.entry_prefix + key))
        except RedisDown:
            self.last_hit = HIT_DISK
            return self.local.get(key) if self.local is not None else None
        self.last_hit = HIT_REDIS
        if value is None:
            return None
        try:
            entry = decode_entry(value)
        except UndecodableEntry as exc:
            log.warning("cache entry for %s in Redis could not be decoded (%s): removed",
                        key_model(key), exc)
            self.delete(key)
            return None
        return None if entry.expired(self.ttl) else entry

    def put(self, key: str, entry: Entry) -> bool:
        ttl_ms = int(max(0.001, self.ttl - entry.age()) * 1000)
        try:
            count, evicted = self._put(
                [self.entry_prefix + key, self.index],
                [encode_entry(entry), ttl_ms, entry.created, self.max_entries, key,
                 self.entry_prefix])
        except RedisFull:  # no copy in the outage tier: Redis answers, and stays the truth
            return False
        except RedisDown:
            return self.local.put(key, entry) if self.local is not None else False
        if evicted:
            emit("cache.eviction", evicted, tier=TIER)
        emit("cache.entries", count, tier=TIER)
        return True

    def delete(self, key: str) -> bool:
        try:
            return bool(self.link.run(lambda client: client.pipeline().delete(
                self.entry_prefix + key).zrem(self.index, key).execute()[0]))
        except RedisDown:
            return self.local.delete(key) if self.local is not None else False

    def count(self) -> int:
        try:
            return int(self.link.run(lambda client: client.zcard(self.index)))
        except RedisDown:
            return self.local.count() if self.local is not None else 0

    def report(self) -> None:
        try:
            emit("cache.entries", self.count_shared(), tier=TIER)
        except RedisDown:
            pass
        if self.local is not None:
            self.local.report()

    def count_shared(self) -> int:
        return int(self.link.run(lambda client: client.zcard(self.index)))

    # --- single flight across instances -------------------------------------------------

    def claim(self, key: str, seconds: float) -> bool:
        """Take or renew the lease on `key` (see `DiskTier.claim`): in Redis across
        instances, in the local file while Redis is unreachable."""
        try:
            lease, ms = [self._lease(key)], int(seconds * 1000)
            holder = self._claim(lease, [self.owner, ms, ""])
            if holder != 1 and redis_link.dead_here(holder):  # its worker died: take the lease over
                holder = self._claim(lease, [self.owner, ms, holder])
            held = holder == 1
            if held:
                self._claimed[key] = True
            return held
        except RedisDown:
            if self._claimed.get(key):  # ours in Redis: keep going, it expires by itself
                return True
            self._claimed[key] = False
            return self.local.claim(key, seconds) if self.local is not None else True

    def release(self, key: str) -> None:
        in_redis = self._claimed.pop(key, True)
        if not in_redis:
            if self.local is not None:
                self.local.release(key)
            return
        try:
            self._release([self._lease(key)], [self.owner])
        except RedisDown:
            pass  # the lease runs out by itself

    # --- maintenance: Redis expires entries itself; the index and the local file remain --

    def expire_step(self, batch: int, now: float | None = None) -> tuple[list[str], bool]:
        limit = (time.time() if now is None else now) - self.ttl
        try:
            self.link.run(lambda client: client.zremrangebyscore(self.index, "-inf", limit))
        except RedisDown:
            pass
        if self.local is None:
            return [], False
        return self.local.expire_step(batch, now)

    def evict_excess(self, batch: int) -> int:
        return self.local.evict_excess(batch) if self.local is not None else 0

    def checkpoint(self) -> None:
        """The local file's WAL checkpoint (what the sweeper asks of either tier)."""
        if self.local is not None:
            self.local.checkpoint()

    # --- purges -------------------------------------------------------------------------

    def last_purge(self) -> int:
        try:
            return int(self.link.run(lambda client: client.get(self.purge_id)) or 0)
        except RedisDown:
            return 0  # purges older than this process are ignored anyway (`opened`)

    def purges_since(self, last_id: int) -> list[tuple[int, str | None]]:
        try:
            records = self.link.run(lambda client: client.lrange(self.purge_log, 0, -1))
        except RedisDown:
            return []
        purges = []
        for record in records:
            data = json.loads(record)
            if data["id"] > last_id and data["at"] >= self.opened:
                purges.append((data["id"], data["model"]))
        return sorted(purges)

    def purge(self, model: str | None = None, batch: int = SCAN_BATCH) -> int:
        """Delete every entry (or those of `model`) in Redis and in this host's local
        file, and record the purge for the workers of every instance."""
        start = model_prefix(model) if model is not None else None
        removed = 0
        cursor = 0
        while True:
            cursor, members = self.link.run(lambda client, cursor=cursor: client.zscan(
                self.index, cursor, count=batch))
            keys = [member.decode() for member, _score in members
                    if start is None or member.decode().startswith(start)]
            if keys:
                removed += self.link.run(lambda client, keys=keys: client.pipeline()
                                         .delete(*(self.entry_prefix + key for key in keys))
                                         .zrem(self.index, *keys).execute()[1])
            if cursor == 0:
                break
        purge_id = self.link.run(lambda client: client.incr(self.purge_id))
        record = json.dumps({"id": purge_id, "model": model, "at": time.time()})
        self.link.run(lambda client: client.pipeline().lpush(self.purge_log, record)
                      .ltrim(self.purge_log, 0, PURGE_LOG - 1).execute())
        if self.local is not None:
            self.local.purge(model)
        return removed

    def stats(self) -> dict[str, Any]:
        """Counts by model and ages, from the index (for the `cache` command)."""
        now = time.time()
        by_model: dict[str, int] = {}
        expired = 0
        oldest = newest = None
        for member, created in self.link.run(lambda client: list(client.zscan_iter(
                self.index, count=SCAN_BATCH, score_cast_func=float))):
            key = member.decode()
            by_model[key_model(key)] = by_model.get(key_model(key), 0) + 1
            expired += now - created >= self.ttl
            oldest = created if oldest is None else min(oldest, created)
            newest = created if newest is None else max(newest, created)
        used = self.link.run(lambda client: client.info("memory")).get("used_memory", 0)
        return {"file": f"{redis_link.safe_url(self.link.url)} (prefix {self.link.prefix})",
                "bytes": used, "entries": sum(by_model.values()), "expired": expired,
                "max_entries": self.max_entries, "ttl_seconds": self.ttl,
                "oldest_age_seconds": None if oldest is None else round(now - oldest, 1),
                "newest_age_seconds": None if newest is None else round(now - newest, 1),
                "models": dict(sorted(by_model.items()))}

    def close(self) -> None:
        if self.local is not None:
            self.local.close()


def shared_tier(settings: Settings, local: DiskTier | None) -> DiskTier | RedisTier | None:
    """The tier behind the memory tier: Redis (over the local file) with `--redis-url`,
    else the local disk tier itself."""
    link = redis_link.link_for(settings)
    if link is None:
        return local
    return RedisTier(link, local, settings.cache_ttl / 1000, settings.cache_max_entries)

