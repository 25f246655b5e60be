"""The cache sweeper against each tier behind memory, through real gunicorn bridges: the
local disk file, and Redis (`--redis-url`, a real `redis-server` on a free loopback
port). Entries stored long ago are swept out within a few rounds, and no round fails."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Callable

import redis
from helpers import wait_for

from bridge.cache.disk import FILE_NAME, TABLE, bulk_insert
from bridge.cache.entry import Entry, encode_entry
from bridge.cache.keys import cache_key
from bridge.serve.processes import Process

EXPIRED, FRESH = 20, 1
FAILURES = ("Traceback", "sweeper round failed", "AttributeError")


def entries(now: float) -> list[tuple[str, Entry]]:
    """`EXPIRED` entries an hour old (the TTL is 30 s), then `FRESH` one just made."""
    made = []
    for index in range(EXPIRED + FRESH):
        created = now - 3600 if index < EXPIRED else now
        payload = {"model": "qwen3", "messages": [{"role": "user", "content": f"q{index}"}]}
        made.append((cache_key("openai", "chat", payload, None, "http://upstream"),
                     Entry("openai", "chat", "qwen3", created, body=b"{}")))
    return made


def disk_rows(cache_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(cache_dir / FILE_NAME)) as db:
        return db.execute(f'SELECT COUNT(*) FROM "{TABLE}"').fetchone()[0]


def assert_no_failed_round(bridge: Process) -> None:
    text = bridge.log()
    assert not [word for word in FAILURES if word in text], text[-3000:]


def test_the_sweeper_clears_expired_entries_from_the_disk_tier(
        make_bridge: Callable[..., Process], tmp_path: Path) -> None:
    bulk_insert(tmp_path, entries(time.time()))
    assert disk_rows(tmp_path) == EXPIRED + FRESH
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path))
    wait_for(lambda: disk_rows(tmp_path) == FRESH, 60, "the expired disk entries to go")
    assert_no_failed_round(bridge)


def test_the_sweeper_clears_expired_entries_from_the_redis_index(
        make_bridge: Callable[..., Process], redis_server: Process, tmp_path: Path) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    index = f"{prefix}:cache:index"
    client = redis.Redis.from_url(redis_server.url)
    for key, entry in entries(time.time()):
        client.set(f"{prefix}:cache:e:{key}", encode_entry(entry))
        client.zadd(index, {key: entry.created})
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path), "--redis-timeout",
                         "1000", "--redis-prefix", prefix, "--redis-url", redis_server.url)
    wait_for(lambda: client.zcard(index) == FRESH, 60, "the expired index entries to go")
    # rounds keep running without failing (each round runs every tier's maintenance)
    assert_no_failed_round(bridge)
    client.close()
