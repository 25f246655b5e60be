"""Upstream slots shared by every bridge instance (`--redis-url`): one in-flight cap.

The slots are a Redis sorted set (`<prefix>:admission:<name>`): one member per slot held,
scored by the end of its lease in Redis's clock. Taking a slot is one server-side
script (drop expired leases, count, add), so N instances together never hold more than
`--max-concurrency` slots. Each process renews the leases of the slots it holds every
`RENEW_SECONDS`; a slot whose instance died (`kill -9`, a lost host) is free again once
its lease (`LEASE_SECONDS`) runs out. While Redis is unreachable, slots are taken from
the instance-local lock files instead (degraded: each instance then has its own cap).
The queue of waiters stays instance-local: it bounds what one instance holds waiting.
"""

from __future__ import annotations

import itertools
import logging
import secrets

import gevent

from bridge.admission.local_slots import LockSlots
from bridge.core import redis_link
from bridge.core.redis_link import Link, RedisDown
from bridge.core.settings import Settings

log = logging.getLogger("bridge.admission")

LEASE_SECONDS = 6.0
RENEW_SECONDS = 2.0

# KEYS: slots. ARGV: limit, member, lease ms. 1 when the slot was taken.
_TAKE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return 1
"""
# KEYS: slots. ARGV: lease ms, members... Extends the leases still held.
_RENEW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
"""


class RedisSlots:
    """`LockSlots`'s interface over Redis leases, with the local slots as fallback.
    Indexes below the local count are local slots; the others are Redis leases."""

    def __init__(self, link: Link, local: LockSlots, name: str):
        self.link = link
        self.local = local
        self.limit = len(local.paths)
        self.key = link.key("admission", name)
        self.owner = f"{redis_link.owner_name()}:{secrets.token_hex(4)}"
        self._numbers = itertools.count(self.limit)
        self._held: dict[int, str] = {}   # index -> Redis member, in this process
        self._renewer: gevent.Greenlet | None = None
        self._take = link.script(_TAKE)
        self._renew = link.script(_RENEW)

    def try_take(self) -> int | None:
        index = next(self._numbers)
        member = f"{self.owner}:{index}"
        try:
            taken = self._take([self.key], [self.limit, member, int(LEASE_SECONDS * 1000)])
        except RedisDown:
            return self.local.try_take()
        if not taken:
            return None
        self._held[index] = member
        if self._renewer is None or self._renewer.dead:
            self._renewer = gevent.spawn(self._keep_leases)
        return index

    def give_back(self, index: int) -> None:
        if index < self.limit:
            self.local.give_back(index)
            return
        member = self._held.pop(index, None)
        if member is None:
            return
        try:
            self.link.run(lambda client: client.zrem(self.key, member))
        except RedisDown:
            pass  # its lease runs out by itself

    def _keep_leases(self) -> None:
        """Renew this process's leases while it holds any."""
        while self._held:
            gevent.sleep(RENEW_SECONDS)
            members = list(self._held.values())
            if not members:
                return
            try:
                self._renew([self.key], [int(LEASE_SECONDS * 1000), *members])
            except RedisDown:
                continue  # tried again next round; a lease lost meanwhile frees a slot early


def shared_slots(settings: Settings, local: LockSlots, name: str
                 ) -> LockSlots | RedisSlots:
    """The slots `name`: in Redis with `--redis-url` (shared by every instance), else the
    local lock files."""
    link = redis_link.link_for(settings)
    return local if link is None else RedisSlots(link, local, name)
