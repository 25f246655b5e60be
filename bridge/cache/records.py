"""Side records in the cache's tiers: a small JSON document a feature keeps for the cache
TTL under a name of its own (the Responses API's answers, by response id), stored as an
entry beside the answers (memory, then disk; Redis with `--redis-url`, so that every
instance knows it) and expired, evicted and purged with them.

A record belongs to the principal that wrote it: its key is a digest of the kind, the
principal and the name, so another client naming the same record finds nothing.

A record may be shared by answers that differ only in a nonce (random hex in their ids):
it is stored with the nonce as a placeholder (a NUL byte, which JSON never holds), and
each reader names the nonce its answer had. The shared tier is the one that every
worker sees: a reader asks it first, so that a record replaced in another worker (`GONE`)
is seen at once.
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
NONCE = b"\0"
GONE = {"gone": True}  # what a record that can no longer be trusted is replaced with


class Records:
    def __init__(self, memory: MemoryTier, disk: DiskTier | RedisTier | None):
        self.memory, self.disk = memory, disk

    @staticmethod
    def key(kind: str, principal: str, name: str) -> str:
        """`<kind>\\t<digest>`: records of a kind are purged as a "model" of that name."""
        digest = hashlib.sha256("\0".join((kind, principal, name)).encode(
            "utf-8", "surrogatepass")).hexdigest()
        return model_prefix(kind) + digest

    @staticmethod
    def encode(value: Any, nonce: str = "") -> bytes:
        """A record's stored bytes: its JSON (ASCII: any text fits), the nonce a placeholder."""
        body = json.dumps(value, separators=(",", ":")).encode()
        return body.replace(nonce.encode(), NONCE) if nonce else body

    def store(self, key: str, kind: str, body: bytes) -> None:
        """Keep a record's bytes (`encode`) under its `key`, in every tier."""
        entry = Entry(surface=kind, endpoint=ENDPOINT, model=kind, created=time.time(),
                      body=body)
        self.memory.put(key, entry)
        if self.disk is not None:
            self.disk.put(key, entry)

    def held(self, key: str) -> bytes | None:
        """The record's bytes if this worker's memory holds it (a cheap check)."""
        entry = self.memory.get(key)
        return None if entry is None else entry.body

    def find(self, key: str) -> bytes | None:
        """The record's bytes from memory, else from the tier behind it (kept in memory)."""
        body = self.held(key)
        if body is None and self.disk is not None:
            entry = self.disk.get(key)
            if entry is not None and entry.body is not None:
                self.memory.put(key, entry)
                body = entry.body
        return body

    def get(self, kind: str, principal: str, name: str, nonce: str = "") -> Any:
        """The record as the answer with `nonce` wrote it, or None (never stored, another
        principal's, expired); `GONE` when it was replaced as untrusted."""
        key = self.key(kind, principal, name)
        entry = self.disk.get(key) if self.disk is not None else None
        if entry is None:
            entry = self.memory.get(key)
        if entry is None or entry.body is None:
            return None
        try:
            return json.loads(entry.body.replace(NONCE, nonce.encode()))
        except ValueError:
            return None
