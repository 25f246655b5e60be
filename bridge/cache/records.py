"""Side records in the cache's tiers: a small JSON document a feature keeps for the cache
TTL under a name of its own (the Responses API's answers, by response id), stored as an
entry beside the answers (memory, then disk; Redis with `--redis-url`, so that every
instance knows it) and expired, evicted and purged with them.

A record belongs to the principal that wrote it: its key is a digest of the kind, the
principal and the name, so another client naming the same record finds nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from bridge.cache.disk import DiskTier
from bridge.cache.entry import Entry
from bridge.cache.keys import model_prefix
from bridge.cache.memory import MemoryTier
from bridge.cache.redis_tier import RedisTier

ENDPOINT = "record"


class Records:
    def __init__(self, memory: MemoryTier, disk: DiskTier | RedisTier | None):
        self.memory, self.disk = memory, disk

    @staticmethod
    def key(kind: str, principal: str, name: str) -> str:
        """`<kind>\\t<digest>`: records of a kind are purged as a "model" of that name."""
        digest = hashlib.sha256("\0".join((kind, principal, name)).encode(
            "utf-8", "surrogatepass")).hexdigest()
        return model_prefix(kind) + digest

    def put(self, kind: str, principal: str, name: str, value: Any) -> None:
        body = json.dumps(value, separators=(",", ":")).encode()  # ASCII: any text fits
        entry = Entry(surface=kind, endpoint=ENDPOINT, model=kind, created=time.time(),
                      body=body)
        key = self.key(kind, principal, name)
        self.memory.put(key, entry)
        if self.disk is not None:
            self.disk.put(key, entry)

    def get(self, kind: str, principal: str, name: str) -> Any:
        """The record, or None (never stored, another principal's, expired)."""
        key = self.key(kind, principal, name)
        entry = self.memory.get(key)
        if entry is None and self.disk is not None:
            entry = self.disk.get(key)
        if entry is None or entry.body is None:
            return None
        try:
            return json.loads(entry.body)
        except ValueError:
            return None
