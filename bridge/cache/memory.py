"""The memory tier: a per-worker LRU of entries, bounded in entries and in bytes, TTL-checked
on read.

An entry's size (`entry_size`) counts its frames or body with Python's per-object cost,
and what is derived from it (the assembled answer, the replay plan, body templates) plus
room for one cleaned copy of its answer (the think filter's memo): what the worker's
memory really holds for it, within a few percent.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, Iterator

from bridge.cache.entry import ASSEMBLED, Entry
from bridge.core.events import emit

TIER = "memory"
BYTES_OVERHEAD = 33 + 8     # a bytes object, and its slot in a tuple or list
OBJECT_OVERHEAD = 64        # any other small object (a Frame, a tuple's header)
ENTRY_OVERHEAD = 1024       # the Entry, its dicts and its place in the LRU (with its key)


def _size(value: Any) -> int:
    if isinstance(value, (bytes, str)):
        return len(value) + BYTES_OVERHEAD
    if isinstance(value, (list, tuple)):
        return OBJECT_OVERHEAD + sum(_size(item) + 8 for item in value)
    if isinstance(value, dict):
        return OBJECT_OVERHEAD * 4 + sum(_size(item) for item in value.values())
    raw = getattr(value, "raw", None)  # a Frame
    if isinstance(raw, bytes):
        return len(raw) + BYTES_OVERHEAD + OBJECT_OVERHEAD
    return getattr(value, "nbytes", OBJECT_OVERHEAD)


def entry_size(entry: Entry) -> int:
    """The bytes the worker holds for `entry` (see the module's docstring)."""
    answer = entry.body if entry.body is not None else entry.derived.get(ASSEMBLED, b"")
    return (ENTRY_OVERHEAD + _size(entry.frames) + (_size(entry.body) if entry.body else 0)
            + sum(_size(value) for value in entry.derived.values()) + len(answer))


class MemoryTier:
    """Least recently used entries of this worker; `capacity` 0 keeps nothing."""

    def __init__(self, capacity: int, ttl: float, max_bytes: int | None = None):
        self.capacity = capacity if max_bytes != 0 else 0
        self.ttl = ttl
        self.max_bytes = max_bytes  # None: bounded in entries only
        self.bytes = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._sizes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.capacity or (
            self.max_bytes is not None and self.bytes >= self.max_bytes)

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
        """Keep `entry` (sized now: derive what it needs first), evicting the least
        recently used beyond the bounds; one larger than the whole budget is not kept."""
        if self.capacity <= 0:
            return
        size = entry_size(entry)
        if self.max_bytes is not None and size > self.max_bytes:
            self._pop(key)
            return
        self._pop(key)
        self._entries[key] = entry
        self._sizes[key] = size
        self.bytes += size
        evicted = 0
        while len(self._entries) > self.capacity or (
                self.max_bytes is not None and self.bytes > self.max_bytes):
            self._pop(next(iter(self._entries)))
            evicted += 1
        if evicted:
            emit("cache.eviction", evicted, tier=TIER)
        self.report()

    def coldest(self, count: int) -> list[str]:
        """The keys next in line for eviction, least recently used first."""
        return list(itertools.islice(self._entries, count))

    def _pop(self, key: str) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= self._sizes.pop(key)
        return entry

    def evict(self, key: str) -> None:
        if self._pop(key) is not None:
            emit("cache.eviction", tier=TIER)
            self.report()

    def discard(self, keys: list[str]) -> int:
        """Forget entries (purged, refreshed elsewhere); returns how many were held."""
        removed = sum(self._pop(key) is not None for key in keys)
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
