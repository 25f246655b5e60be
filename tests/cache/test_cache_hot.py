"""The hot-promotion rule of the cache (`bridge/cache/hot.py`), on a fake clock: which disk
entries move into a worker's memory, and how the threshold (the `cache.hot_threshold`
gauge) follows the load."""

from __future__ import annotations

import pytest

from bridge.cache.entry import Entry
from bridge.cache.hot import ADJUST_PERIOD, WINDOW, HotTracker
from bridge.cache.memory import MemoryTier
from bridge.core import events


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gauges():
    seen: list[float] = []

    def listener(name: str, value: float, labels: dict) -> None:
        if name == "cache.hot_threshold":
            seen.append(value)

    events.subscribe(listener)
    yield seen
    events.unsubscribe(listener)


def entry() -> Entry:
    return Entry("openai", "chat", "m", created=9e9, body=b"{}")


def disk_hits(hot: HotTracker, key: str, times: int) -> None:
    for _ in range(times):
        hot.disk_hit(key, entry(), hot.touch(key))


def test_more_than_threshold_requests_a_minute_promote():
    clock, memory = Clock(), MemoryTier(10, ttl=3600)
    hot = HotTracker(3, clock)
    disk_hits(hot, "warm", 3)
    assert hot.promote(memory) == 0 and "warm" not in memory
    clock.now += WINDOW  # a minute later the earlier requests no longer count
    disk_hits(hot, "warm", 3)
    assert hot.promote(memory) == 0
    disk_hits(hot, "warm", 1)
    assert hot.promote(memory) == 1 and "warm" in memory


def test_full_memory_keeps_hotter_entries_and_the_threshold_rises(gauges):
    clock, memory = Clock(), MemoryTier(2, ttl=3600)
    hot = HotTracker(2, clock)
    for key in ("a", "b"):
        disk_hits(hot, key, 10)
    assert hot.promote(memory) == 2 and memory.full
    disk_hits(hot, "candidate", 3)  # hotter than the threshold, colder than a and b
    assert hot.promote(memory) == 0 and "candidate" not in memory
    clock.now += ADJUST_PERIOD
    hot.adjust(memory)
    assert hot.threshold == 3 and gauges[-1] == 3
    disk_hits(hot, "hottest", 20)  # hotter than what memory holds: replaces the coldest
    assert hot.promote(memory) == 1 and "hottest" in memory and len(memory) == 2


def test_threshold_falls_when_memory_has_room_and_stays_bounded(gauges):
    clock, memory = Clock(), MemoryTier(100, ttl=3600)
    hot = HotTracker(12, clock)
    for _ in range(20):
        disk_hits(hot, "warm", 1)  # disk hits below the threshold
        clock.now += ADJUST_PERIOD
        hot.adjust(memory)
    assert hot.threshold == hot.low == 1 and gauges[:3] == [9, 7, 6]
    clock.now += ADJUST_PERIOD
    hot.adjust(memory)  # nothing warm any more: it stays
    assert hot.threshold == 1


def test_threshold_holds_still_within_the_minute():
    clock, memory = Clock(), MemoryTier(100, ttl=3600)
    hot = HotTracker(12, clock)
    disk_hits(hot, "warm", 1)
    clock.now += ADJUST_PERIOD / 2
    hot.adjust(memory)
    assert hot.threshold == 12
