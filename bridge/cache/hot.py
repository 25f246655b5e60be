"""Hot promotion: access counts per key over a sliding minute, and the adaptive threshold.

Counts are per worker (each worker has its own memory tier). A disk hit whose key was
requested more than `threshold` times in the last 60 s becomes a candidate; the
sweeper promotes candidates into memory (`HotTracker.promote`).

The adaptive rule, evaluated once per minute (`ADJUST_PERIOD`), bounded to
`[1, max(1000, 10 × initial)]`:
- it rises by a quarter (at least 1) when, during the last minute, candidates were
  turned away because memory was full of entries requested at least as often as they;
- it falls by a quarter (at least 1) when memory is less than half full and some keys
  were hit on disk without reaching the threshold (warm entries that could be in memory);
- otherwise it stays. Its current value is the `cache.hot_threshold` gauge.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Callable

from bridge.cache.entry import Entry
from bridge.cache.memory import MemoryTier
from bridge.core.events import emit

log = logging.getLogger("bridge.cache")

WINDOW = 60.0
ADJUST_PERIOD = 60.0
MAX_TRACKED_KEYS = 200_000  # distinct keys counted per worker; the least recent go first
COLDEST_SAMPLE = 8          # memory entries compared with a candidate when memory is full


class HotTracker:
    def __init__(self, initial_threshold: int, clock: Callable[[], float] = time.monotonic):
        self.initial = initial_threshold
        self.low = 1
        self.high = max(1000, 10 * initial_threshold)
        self.threshold = initial_threshold
        self.clock = clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._candidates: dict[str, Entry] = {}
        self._refused = 0       # candidates turned away by hotter memory, this period
        self._warm = 0          # disk hits below the threshold, this period
        self._adjusted_at = clock()

    # --- counting (request path: O(1) amortised) -----------------------------------------

    def touch(self, key: str) -> int:
        """Count one request for `key`; returns its requests in the last minute."""
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque(maxlen=self.high + 1)
            if len(self._hits) > MAX_TRACKED_KEYS:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        hits.append(now)
        while hits and hits[0] <= now - WINDOW:
            hits.popleft()
        return len(hits)

    def rate(self, key: str) -> int:
        hits = self._hits.get(key)
        if not hits:
            return 0
        cutoff = self.clock() - WINDOW
        return sum(1 for moment in hits if moment > cutoff)

    def disk_hit(self, key: str, entry: Entry, count: int) -> None:
        """A disk hit with `count` requests this minute: above the threshold, a candidate."""
        if count > self.threshold:
            self._candidates[key] = entry
        else:
            self._warm += 1

    # --- background work (sweeper) -------------------------------------------------------

    def promote(self, memory: MemoryTier) -> int:
        """Move the candidates into memory; in a full memory a candidate replaces the least
        recently used entry only when that one was requested less often."""
        promoted = 0
        candidates, self._candidates = self._candidates, {}
        for key, entry in candidates.items():
            if key in memory or memory.capacity <= 0:
                continue
            if memory.full:
                rate = self.rate(key)
                coldest = min(memory.coldest(COLDEST_SAMPLE), key=self.rate, default=None)
                if coldest is None or self.rate(coldest) >= rate:
                    self._refused += 1
                    continue
                memory.evict(coldest)
            memory.put(key, entry)
            promoted += 1
        if promoted:
            emit("cache.promotion", promoted)
        return promoted

    def adjust(self, memory: MemoryTier) -> None:
        """Apply the adaptive rule once per `ADJUST_PERIOD`, and forget idle keys."""
        now = self.clock()
        if now - self._adjusted_at < ADJUST_PERIOD:
            return
        self._adjusted_at = now
        step = max(1, self.threshold // 4)
        before = self.threshold
        if self._refused:
            self.threshold = min(self.high, self.threshold + step)
        elif memory.capacity and len(memory) < memory.capacity / 2 and self._warm:
            self.threshold = max(self.low, self.threshold - step)
        self._refused = self._warm = 0
        if self.threshold != before:
            log.info("cache hot threshold %d -> %d requests/minute", before, self.threshold)
        self.forget_idle()
        self.report()

    def forget_idle(self) -> None:
        """Drop keys not requested for a minute (the least recently requested come first)."""
        cutoff = self.clock() - WINDOW
        while self._hits:
            key, hits = next(iter(self._hits.items()))
            if hits and hits[-1] > cutoff:
                break
            del self._hits[key]

    def forget(self, keys: list[str]) -> None:
        for key in keys:
            self._hits.pop(key, None)
            self._candidates.pop(key, None)

    def report(self) -> None:
        emit("cache.hot_threshold", self.threshold)
