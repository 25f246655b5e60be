"""A worker keeps serving while another process holds the disk tier's write lock
(`bridge/cache/disk.py`: writes that must wait do so off the event loop)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import requests
from helpers import show_upstream_is_open

from bridge.cache.disk import cache_file
from bridge.serve.processes import start_bridge

LOCK_SECONDS = 3.0


def test_a_held_write_lock_does_not_freeze_the_worker(standin_server, tmp_path):
    cache_dir = tmp_path / "cache"
    with start_bridge("--enable-cache", "--cache-dir", str(cache_dir), upstream=standin_server.url,
                      workers=1, log_dir=tmp_path) as bridge:
        show_upstream_is_open(bridge)
        hit = {"model": "qwen3", "messages": [{"role": "user", "content": "a stored answer"}]}
        requests.post(bridge.url + "/v1/chat/completions", json=hit, timeout=30)
        locked, released = threading.Event(), threading.Event()
        times: dict[str, float] = {}

        def hold_the_lock() -> None:  # as another process's long write transaction would
            with sqlite3.connect(cache_file(cache_dir), isolation_level=None, timeout=30) as db:
                db.execute("BEGIN IMMEDIATE")
                locked.set()
                time.sleep(LOCK_SECONDS)
                times["released"] = time.monotonic()
                db.execute("COMMIT")
            released.set()

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        assert locked.wait(10)
        misses: list[requests.Response] = []

        def miss() -> None:  # its store must wait for the lock (or give up after 2 s)
            misses.append(requests.post(bridge.url + "/v1/chat/completions", timeout=30, json={
                "model": "qwen3",
                "messages": [{"role": "user", "content": f"new {uuid.uuid4().hex}"}]}))

        storing = [threading.Thread(target=miss) for _ in range(3)]
        for thread in storing:
            thread.start()
        time.sleep(0.3)  # the misses are waiting to store
        with requests.Session() as session:
            served = [session.post(bridge.url + "/v1/chat/completions", json=hit, timeout=30)
                      for _ in range(10)]
            health = [session.get(bridge.url + "/health", timeout=30) for _ in range(10)]
        times["served"] = time.monotonic()
        for thread in storing:
            thread.join(30)
        holder.join(30)
        assert released.is_set()
        # the hits and health checks went out while the lock was still held
        assert times["served"] < times["released"]
        assert [r.headers["x-cache"] for r in served] == ["HIT-MEMORY"] * 10
        assert all(r.status_code == 200 for r in health)
        # and the misses were answered all the same (a store that cannot happen is skipped)
        assert [r.status_code for r in misses] == [200] * 3
