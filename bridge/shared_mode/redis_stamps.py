"""Revocation stamps in Redis (`--redis-url`): a key revoked on one instance is refused
by every instance within a second.

Each instance has its own key store file (copies of the same keys, say); a revocation
is also written to Redis as a stamp (`<prefix>:keys:revoked`: key hash → time, hashes
only, never keys) with a generation counter. Each worker reads the counter at most every
`REFRESH_SECONDS` and re-reads the stamps when it moved, so a stamp made by `keys revoke`
(or noticed in a key store by any worker) reaches every instance's next request after
that. While Redis is unreachable, each instance knows only its own revocations.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from bridge.core import redis_link
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


class RevocationStamps:
    def __init__(self, link: Link):
        self.link = link
        self.stamps = link.key("keys", "revoked")
        self.generation = link.key("keys", "revoked-generation")
        self._stamp = link.script(_STAMP)
        self._known: frozenset[bytes] = frozenset()
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

    def revoked(self, key_hash: str) -> bool:
        """Whether any instance revoked the key with this hash (as of at most
        `REFRESH_SECONDS` ago, or as of the last time Redis answered)."""
        now = time.monotonic()
        if now - self._checked >= REFRESH_SECONDS:
            self._checked = now
            try:
                generation = self.link.run(lambda client: client.get(self.generation))
                if generation != self._seen:
                    self._known = frozenset(self.link.run(
                        lambda client: client.hkeys(self.stamps)))
                    self._seen = generation
            except RedisDown:
                pass
        return key_hash.encode() in self._known


def revocation_stamps(settings: Settings, timeout: float | None = None
                      ) -> RevocationStamps | None:
    """The stamps of `--redis-url`, None without it."""
    link = redis_link.link_for(settings, timeout)
    return None if link is None else RevocationStamps(link)
