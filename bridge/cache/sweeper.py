"""The background greenlet of each worker: TTL sweeps, eviction backlog, promotions.

Every `INTERVAL` it promotes hot candidates, applies purges made by the `cache`
command, expires memory entries, checkpoints the disk tier's WAL (off the loop: the
loop's own writes never do), then deletes expired and excess disk entries in
batches of `BATCH` rows, yielding to the event loop between batches so that a sweep
over a million entries never holds a worker for more than one short statement.
"""

from __future__ import annotations

import logging
import time

import gevent

from bridge.cache.disk import DiskTier
from bridge.cache.hot import HotTracker
from bridge.cache.keys import model_prefix
from bridge.cache.memory import MemoryTier
from bridge.cache.redis_tier import RedisTier
from bridge.core.lifecycle import repeat

log = logging.getLogger("bridge.cache")

INTERVAL = 1.0
BATCH = 100            # rows per disk statement: ~2 ms, 5 ms at most, on a million rows
MEMORY_BATCH = 500     # memory entries checked between two yields
MAX_STEPS = 500        # disk batches per round (50,000 rows); the rest waits for the next
# Between steps: a timer, not sleep(0). sleep(0) only queues a callback, and gevent may run
# many queued callbacks (our steps, the writer thread's hand-overs) before it looks at timers and
# sockets again; a 1 ms timer makes every step go through a whole loop iteration.
PAUSE = 0.001


class Sweeper:
    def __init__(self, memory: MemoryTier, disk: DiskTier | RedisTier | None, hot: HotTracker):
        self.memory = memory
        self.disk = disk
        self.hot = hot
        self._purge_seen = 0
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self.disk is not None:
            self._purge_seen = self.disk.last_purge()
        self._greenlet = gevent.spawn(repeat, INTERVAL, self.round, "cache sweeper round", log)

    def stop(self, timeout: float | None = None) -> None:
        """End the loop where it waits (between statements: each disk statement is its
        own transaction, so nothing is left half-done); wait up to `timeout` for it."""
        if self._greenlet is not None:
            self._greenlet.kill(block=timeout is not None, timeout=timeout)

    def round(self) -> None:
        self.hot.promote(self.memory)
        self.apply_purges()
        self.expire_memory()
        self.sweep_disk()
        self.hot.adjust(self.memory)

    def apply_purges(self) -> None:
        if self.disk is None:
            return
        for purge_id, model in self.disk.purges_since(self._purge_seen):
            self._purge_seen = purge_id
            keys = [key for key in self.memory.keys()
                    if model is None or key.startswith(model_prefix(model))]
            self.memory.discard(keys)
            self.hot.forget(keys)
            log.info("cache purge %s: %d memory entries dropped", model or "(all)", len(keys))

    def expire_memory(self) -> None:
        keys = list(self.memory.keys())
        for start in range(0, len(keys), MEMORY_BATCH):
            self.memory.expire(self.memory.expired_keys(keys[start:start + MEMORY_BATCH],
                                                        time.time()))
            gevent.sleep(PAUSE)

    def sweep_disk(self) -> None:
        if self.disk is None:
            return
        self.disk.checkpoint()
        for _ in range(MAX_STEPS):
            _, more = self.disk.expire_step(BATCH)
            gevent.sleep(PAUSE)
            if not more:
                break
        for _ in range(MAX_STEPS):
            if self.disk.evict_excess(BATCH) < BATCH:
                break
            gevent.sleep(PAUSE)
