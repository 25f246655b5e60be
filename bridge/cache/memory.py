"""The memory tier: a per-worker LRU of entries, bounded in entries, TTL-checked on read."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Iterator

from bridge.cache.entry import Entry
from bridge.core.events import emit

TIER = "memory"


class MemoryTier:
    """Least recently used entries of this worker; `capacity` 0 keeps nothing."""

    def __init__(self, capacity: int, ttl: float):
        self.capacity = capacity
        self.ttl = ttl
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.capacity

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expired(self.ttl):
            self.expire([key])
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        if self.capacity <= 0:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        evicted = 0
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            evicted += 1
        if evicted:
            emit("cache.eviction", evicted, tier=TIER)
        self.report()

    def coldest(self, count: int) -> list[str]:
        """The keys next in line for eviction, least recently used first."""
        return list(itertools.islice(self._entries, count))

    def evict(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            emit("cache.eviction", tier=TIER)
            self.report()

    def discard(self, keys: list[str]) -> int:
        """Forget entries (purged, refreshed elsewhere); returns how many were held."""
        removed = sum(self._entries.pop(key, None) is not None for key in keys)
        if removed:
            self.report()
        return removed

    def expire(self, keys: list[str]) -> None:
        removed = self.discard(keys)
        if removed:
            emit("cache.expiration", removed, tier=TIER)

    def keys(self) -> Iterator[str]:
        return iter(list(self._entries))

    def expired_keys(self, keys: list[str], now: float) -> list[str]:
        return [key for key in keys
                if key in self._entries and self._entries[key].expired(self.ttl, now)]

    def report(self) -> None:
        emit("cache.entries", len(self._entries), tier=TIER)
