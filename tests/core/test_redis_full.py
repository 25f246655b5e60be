"""A full Redis (`maxmemory` reached under `noeviction`) is not a Redis that is down:
two bridges (real gunicorn, one worker each) keep reading what it holds (HIT-REDIS),
answer the misses whose stores it refuses without an error, log one warning when it
fills and one when it takes writes again; and an async job whose result or lease it
refuses is neither run a second time nor reported lost. A real `redis-server` on a
free loopback port, filled and then limited at run time with `CONFIG SET`."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis
import requests
from helpers import show_upstream_is_open, wait_for

from bridge.async_jobs.redis_store import RedisJobStore
from bridge.async_jobs.store import DONE, Job, Result
from bridge.core.redis_link import Link, RedisFull
from bridge.serve.processes import Process, start_redis

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs Debian's redis-server (.ci/run installs it)")
REDIS = ("--redis-timeout", "1000", "--redis-url")
CHAT = "/v1/chat/completions"
FULL_WARNING = "is full ("
WRITABLE_AGAIN = "accepts writes again after"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Process]:
    with start_redis(tmp_path) as process:  # of its own: this test fills it
        yield process


def fill(client: redis.Redis) -> None:
    """Make Redis full: some data, then a `maxmemory` below what it uses, no eviction."""
    client.set("filler", b"x" * 1_000_000)
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used // 2)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("one-more", b"x")


def chat(text: str) -> dict:
    return {"model": "qwen3", "messages": [{"role": "user", "content": text}]}


def ask(bridge: Process, body: dict) -> str:
    answer = requests.post(bridge.url + CHAT, json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-cache"]


def test_a_full_redis_still_serves_reads_and_refuses_writes_quietly(
        make_bridge, redis_server: Process, tmp_path: Path) -> None:
    prefix = f"full-{uuid.uuid4().hex[:8]}"
    a, b = (make_bridge(*REDIS, redis_server.url, "--redis-prefix", prefix, "--enable-cache",
                        "--cache-dir", str(tmp_path / name), workers=1) for name in "ab")
    for bridge in (a, b):
        show_upstream_is_open(bridge)
    stored = chat(f"stored before {uuid.uuid4().hex}")
    assert ask(a, stored) == "MISS"
    client = redis.Redis.from_url(redis_server.url)
    fill(client)

    assert ask(b, stored) == "HIT-REDIS"  # reads go on
    for _ in range(5):  # stores Redis refuses: each answer served all the same
        refused = chat(f"refused {uuid.uuid4().hex}")
        assert ask(a, refused) == "MISS"
        assert ask(b, refused) == "MISS"  # not stored anywhere the other could read
    assert ask(b, stored) == "HIT-REDIS"
    ready = requests.get(b.url + "/ready", timeout=30).json()
    assert ready["redis"] == "full"
    for bridge in (a, b):  # one warning for the state change, never "unreachable"
        # (a store may run after its answer went out: its line may come a moment later)
        wait_for(lambda bridge=bridge: FULL_WARNING in bridge.log(), 30, "the full warning")
        assert bridge.log().count(FULL_WARNING) == 1, bridge.log()[-3000:]
        assert "unreachable" not in bridge.log()

    client.config_set("maxmemory", 0)

    def shared_again() -> bool:  # a miss on one is a hit on the other once writes work
        body = chat(f"after {uuid.uuid4().hex}")
        ask(a, body)
        return ask(b, body) == "HIT-REDIS"
    wait_for(shared_again, 30, "Redis to take the bridge's stores again")
    wait_for(lambda: WRITABLE_AGAIN in a.log(), 30, "the writable-again line")
    assert a.log().count(FULL_WARNING) == 1 and a.log().count(WRITABLE_AGAIN) == 1
    assert "unreachable" not in a.log() + b.log()


def job(fingerprint: str) -> Job:
    return Job(fingerprint=fingerprint, owner="", content_hash="h", surface="openai",
               endpoint="chat", method="POST", path=CHAT, query="", headers={}, body=b"{}")


def test_a_job_whose_redis_is_full_keeps_its_lease_and_is_not_lost(redis_server: Process
                                                                    ) -> None:
    prefix = f"jobs-{uuid.uuid4().hex[:8]}"
    here, elsewhere = (RedisJobStore(Link(redis_server.url, prefix, 5.0)) for _ in range(2))
    here.submit(job("job-1"), 10)
    lease = 0.5  # seconds; renewed below well within it, as the runner does every second
    claimed = here.claim("here:1", lease)
    assert claimed is not None
    client = redis.Redis.from_url(redis_server.url)
    fill(client)

    result = Result(200, {"content-type": "application/json"}, b'{"ok": true}')
    with pytest.raises(RedisFull):  # refused: not "lost" (the runner keeps it and retries)
        here.finish(claimed, DONE, result, 60)
    # past several of the first lease's ends, its run is still the only one
    deadline = time.monotonic() + 4 * lease
    while time.monotonic() < deadline:
        here.renew("here:1", lease)
        assert elsewhere.claim("elsewhere:1", lease) is None

    client.config_set("maxmemory", 0)
    assert here.finish(claimed, DONE, result, 60) is True
    stored = elsewhere.get("", "job-1")
    assert stored is not None and stored.status == DONE and stored.attempts == 1
