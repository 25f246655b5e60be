"""Cross-worker single-flight leases whose holder is gone: taken over at once, in the
disk tier (the holder's pid in `cache_flights`) and in the Redis tier (the holder's host
and pid in the lease), instead of waiting for them to run out. A worker killed with its
master may linger as a zombie (PID 1 of a container often reaps nothing): it is gone."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis
from helpers import wait_for

from bridge.cache.disk import DiskTier
from bridge.cache.redis_tier import RedisTier
from bridge.core.instance import pid_alive
from bridge.core.redis_link import Link
from bridge.serve.processes import Process

LONG = 600.0  # seconds: a lease that would outlive the test


@pytest.fixture
def zombie() -> Iterator[int]:
    """The pid of a process that has exited but is not reaped yet."""
    child = subprocess.Popen(["true"])
    wait_for(lambda: not pid_alive(child.pid), 30, "`true` to exit")
    yield child.pid
    child.wait()


def test_pid_alive_tells_a_zombie_from_a_live_process(zombie: int) -> None:
    assert not pid_alive(zombie)
    with subprocess.Popen(["sleep", "30"]) as live:
        assert pid_alive(live.pid)
        live.kill()


def test_the_disk_tier_takes_over_a_dead_workers_lease(tmp_path: Path, zombie: int) -> None:
    tier = DiskTier(tmp_path, ttl=60, max_entries=5000).open()
    try:
        tier._execute("INSERT INTO cache_flights (key, pid, expires) VALUES (?, ?, ?) "
                      "RETURNING 1", ("dead", zombie, time.time() + LONG))
        with subprocess.Popen(["sleep", "30"]) as live:
            tier._execute("INSERT INTO cache_flights (key, pid, expires) VALUES (?, ?, ?) "
                          "RETURNING 1", ("live", live.pid, time.time() + LONG))
            assert tier.claim("dead", 15)
            assert not tier.claim("live", 15)
            live.kill()
    finally:
        tier.close()


def test_the_redis_tier_takes_over_a_dead_workers_lease_of_this_host(
        redis_server: Process, tmp_path: Path, zombie: int) -> None:
    link = Link(redis_server.url, f"test-{uuid.uuid4().hex[:8]}", 1.0)
    tier = RedisTier(link, None, ttl=60, max_entries=5000)
    client = redis.Redis.from_url(redis_server.url)
    host = socket.gethostname()
    holders = {"dead": f"{host}:{zombie}:0000", "elsewhere": f"not-{host}:{zombie}:0000"}
    with subprocess.Popen(["sleep", "30"]) as live:
        holders["live"] = f"{host}:{live.pid}:0000"
        for key, holder in holders.items():
            client.set(link.key("cache", "flight", key), holder, px=int(LONG * 1000))
        assert tier.claim("dead", 15)
        assert client.get(link.key("cache", "flight", "dead")).decode() == tier.owner
        assert not tier.claim("live", 15)  # a live holder keeps it
        assert not tier.claim("elsewhere", 15)  # another host's: it runs out by itself
        live.kill()
    client.close()
