"""Revocation stamps in Redis (`--redis-url`): a key revoked on one instance is refused
by every instance within a second.

Each instance has its own key store file (copies of the same keys, say); a revocation
is also written to Redis as a stamp (`<prefix>:keys:revoked`: key hash → time, hashes
only, never keys) with a generation counter. Each worker reads the counter at most every
`REFRESH_SECONDS` and re-reads the stamps when it moved, so a stamp made by `keys revoke`
(or noticed in a key store by any worker) reaches every instance's next request after
that. While Redis is unreachable, each instance knows only its own revocations.

Budgets changed with `keys update --redis-url …` are stamped the same way
(`<prefix>:keys:budgets`: key hash → `N/period`, or empty for none, moving the same
generation counter): a stamped budget wins over the copy in each instance's key store.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from bridge.core import redis_link
from bridge.core.exchange import Budget
from bridge.core.redis_link import Link, RedisDown
from bridge.core.settings import Settings

log = logging.getLogger("bridge.keystore")

REFRESH_SECONDS = 0.5

# KEYS: stamps, generation. ARGV: time, hashes... The generation moves when one is new.
_STAMP = """
local added = 0
for i = 2, #ARGV do added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1]) end
if added > 0 then redis.call('INCR', KEYS[2]) end
return added
"""


def _budget(text: bytes) -> Budget | None:
    tokens, _, period = text.decode().partition("/")
    return Budget(int(tokens), period) if tokens.isdigit() and int(tokens) else None


class RevocationStamps:
    def __init__(self, link: Link):
        self.link = link
        self.stamps = link.key("keys", "revoked")
        self.generation = link.key("keys", "revoked-generation")
        self.budgets = link.key("keys", "budgets")
        self._stamp = link.script(_STAMP)
        self._known: frozenset[bytes] = frozenset()
        self._budgets: dict[bytes, Budget | None] = {}
        self._seen: bytes | None = None
        self._checked = float("-inf")
        self._published: set[str] = set()

    def publish(self, key_hashes: Iterable[str]) -> None:
        """Stamp these key hashes as revoked (those not stamped by this process yet)."""
        new = [digest for digest in key_hashes if digest not in self._published]
        if not new:
            return
        try:
            self._stamp([self.stamps, self.generation], [repr(time.time()), *new])
        except RedisDown:
            log.warning("revocation of %d key(s) not shared yet: Redis is unreachable",
                        len(new))
            return  # tried again the next time the key store is read
        self._published.update(new)

    def publish_budget(self, key_hash: str, budget: Budget | None) -> None:
        """Stamp a key's budget for every instance (RedisDown when Redis fails)."""
        def stamp(client):  # noqa: ANN001, ANN202 - a redis.Redis
            pipe = client.pipeline(transaction=True)
            pipe.hset(self.budgets, key_hash, str(budget) if budget else "")
            pipe.incr(self.generation)
            pipe.execute()
        self.link.run(stamp)

    def revoked(self, key_hash: str) -> bool:
        """Whether any instance revoked the key with this hash (as of at most
        `REFRESH_SECONDS` ago, or as of the last time Redis answered)."""
        self._refresh()
        return key_hash.encode() in self._known

    def budget(self, key_hash: str, stored: Budget | None) -> Budget | None:
        """The key's budget: the one stamped in Redis, else `stored` (its key store's)."""
        self._refresh()
        found = key_hash.encode()
        return self._budgets[found] if found in self._budgets else stored

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < REFRESH_SECONDS:
            return
        self._checked = now
        try:
            generation = self.link.run(lambda client: client.get(self.generation))
            if generation != self._seen:
                known, budgets = self.link.run(lambda client: (
                    client.hkeys(self.stamps), client.hgetall(self.budgets)))
                self._known = frozenset(known)
                self._budgets = {digest: _budget(text) for digest, text in budgets.items()}
                self._seen = generation
        except RedisDown:
            pass


def revocation_stamps(settings: Settings, timeout: float | None = None
                      ) -> RevocationStamps | None:
    """The stamps of `--redis-url`, None without it."""
    link = redis_link.link_for(settings, timeout)
    return None if link is None else RevocationStamps(link)
