"""The cache's disk tier and its life over time, through real gunicorn bridges: restarts,
hot promotion, TTL expiry, eviction at max entries, corrupt files and entries, and the
`cache` command used while the bridge runs."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from helpers import show_upstream_is_open

from bridge.cache.disk import FILE_NAME, TABLE, bulk_insert
from bridge.cache.entry import HEADER_SIZE, MAGIC, Entry, pack_created
from bridge.cache.keys import cache_key
from bridge.serve.processes import ROOT

MODEL = "qwen3"
CHAT = "/v1/chat/completions"


def body_for(q: str) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": q}]}


def ask(bridge, q: str, session=None, **kwargs) -> requests.Response:
    return (session or requests).post(bridge.url + CHAT, json=body_for(q), timeout=30, **kwargs)


def enable(cache_dir: Path, *flags: str) -> tuple[str, ...]:
    return ("--enable-cache", "--cache-dir", str(cache_dir), *flags)


def cache_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", "cache", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def stats(cache_dir: Path) -> dict:
    done = cache_command("stats", "--json", "--cache-dir", str(cache_dir))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def key_for(standin, q: str) -> str:
    """The cache key of question `q` asked of the stand-in."""
    return cache_key("openai", "chat", body_for(q), upstream=standin.url)


def set_age(cache_dir: Path, key: str, seconds: float) -> None:
    """Make the stored entry under `key` look `seconds` old."""
    with contextlib.closing(sqlite3.connect(cache_dir / FILE_NAME, isolation_level=None)) as db:
        (value,), = db.execute(f'SELECT value FROM "{TABLE}" WHERE key = ?', (key,))
        db.execute(f'UPDATE "{TABLE}" SET value = ? WHERE key = ?',
                   (MAGIC + pack_created(time.time() - seconds) + value[HEADER_SIZE:], key))


def stored_keys(cache_dir: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(cache_dir / FILE_NAME)) as db:
        return {key for (key,) in db.execute(f'SELECT key FROM "{TABLE}"')}


def poll(condition, timeout: float = 6.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def test_restart_keeps_entries_and_hot_entries_move_to_memory(standin, make_bridge, tmp_path):
    q = f"restart {uuid.uuid4().hex[:6]}"
    first = make_bridge(*enable(tmp_path, "--disable-think-filter"))
    miss = ask(first, q)
    assert miss.headers["x-cache"] == "MISS" and miss.json()["choices"][0]["message"]["reasoning"]
    first.stop()
    second = make_bridge(*enable(tmp_path, "--cache-hot-threshold", "3"))
    show_upstream_is_open(second)
    with requests.Session() as session:  # one connection: one worker, one memory tier
        seen = [ask(second, q, session).headers["x-cache"] for _ in range(4)]
        assert seen == ["HIT-DISK"] * 4  # 4 > 3 requests this minute: a candidate
        assert poll(lambda: ask(second, q, session).headers["x-cache"] == "HIT-MEMORY")
    # stored unfiltered, served through this bridge's think filter
    assert ask(second, q).json()["choices"][0]["message"] == {"role": "assistant",
                                                               "content": f"Echo: {q}"}
    assert standin.count(CHAT) == 2


def test_entries_expire_after_the_ttl_in_both_tiers(standin, make_bridge, tmp_path):
    kept, stale = f"ttl {uuid.uuid4().hex[:6]}", f"stale {uuid.uuid4().hex[:6]}"
    first = make_bridge(*enable(tmp_path))
    ask(first, kept), ask(first, stale)
    first.stop()
    set_age(tmp_path, key_for(standin, stale), 40)  # the TTL is 30 s
    bridge = make_bridge(*enable(tmp_path, "--cache-hot-threshold", "1"))
    assert poll(lambda: stats(tmp_path)["entries"] == 1)  # the sweeper removed the stale one
    show_upstream_is_open(bridge)
    set_age(tmp_path, key_for(standin, kept), 25)
    with requests.Session() as session:
        hit = ask(bridge, kept, session)
        assert hit.headers["x-cache"] == "HIT-DISK" and int(hit.headers["age"]) >= 25
        assert poll(lambda: ask(bridge, kept, session).headers["x-cache"] == "HIT-MEMORY", 4)
        time.sleep(max(0.0, 30.2 - float(ask(bridge, kept, session).headers["age"])))
        assert ask(bridge, kept, session).headers["x-cache"] == "MISS"  # gone from memory too
    assert ask(bridge, stale).headers["x-cache"] == "MISS"
    assert standin.count(CHAT) == 5


def test_oldest_entries_go_when_full(standin, make_bridge, tmp_path):
    now = time.time()
    old = [f"evict {i}" for i in range(4500)]
    stored = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "stored"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    bulk_insert(tmp_path, ((key_for(standin, q),
                            Entry("openai", "chat", MODEL, now - 20 + i / 1000,
                                  body=json.dumps(stored).encode()))
                           for i, q in enumerate(old)))
    # an hour's TTL: the entries made 20 s old must not expire however slow the start is
    bridge = make_bridge(*enable(tmp_path, "--cache-max-entries", "4500",
                                 "--cache-ttl", "3600000"))
    for i in range(3):
        assert ask(bridge, f"new {i} {uuid.uuid4().hex[:6]}").headers["x-cache"] == "MISS"
    # the stores are written off the loop, after the answers went out
    assert poll(lambda: not {key_for(standin, q) for q in old[:3]} & stored_keys(tmp_path),
                timeout=30)
    assert stats(tmp_path)["entries"] == 4500
    streamed = requests.post(bridge.url + CHAT, json={**body_for(old[3]), "stream": True})
    assert streamed.headers["x-cache"] == "HIT-DISK" and '"content":"stored' in streamed.text
    assert ask(bridge, old[-1]).json()["choices"][0]["message"]["content"] == "stored"
    assert [ask(bridge, q).headers["x-cache"] for q in old[:3]] == ["MISS"] * 3
    assert standin.count(CHAT) == 6


def test_corrupt_file_and_entries_are_survived(standin, make_bridge, tmp_path):
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database\n" * 300)
    bridge = make_bridge(*enable(tmp_path))
    q = f"corrupt {uuid.uuid4().hex[:6]}"
    assert [ask(bridge, q).status_code for _ in range(2)] == [200, 200]
    assert ask(bridge, q, headers={"Connection": "close"}).headers["x-cache"].startswith("HIT-")
    assert "moved aside" in bridge.log() and "Traceback" not in bridge.log()
    assert list(tmp_path.glob(f"{FILE_NAME}.corrupt-*"))
    # an entry that cannot be decoded is a miss, and is replaced
    other = f"garbled {uuid.uuid4().hex[:6]}"
    with contextlib.closing(sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)) as db:
        db.execute(f'INSERT INTO "{TABLE}" (key, value) VALUES (?, ?)',
                   (key_for(standin, other), b"\x80garbage"))
        db.execute(f'INSERT INTO "{TABLE}" (key, value) VALUES (?, CAST(? AS TEXT))',
                   (key_for(standin, other + "!"), b"\x80garbage"))
    answer = ask(bridge, other)
    assert answer.headers["x-cache"] == "MISS" and answer.json()["choices"][0]["message"]
    assert ask(bridge, other).headers["x-cache"].startswith("HIT-")
    assert ask(bridge, other + "!").headers["x-cache"] == "MISS"
    assert "could not be decoded" in bridge.log()
    assert standin.count(CHAT) == 3


def test_cache_command_while_the_bridge_runs(standin, make_bridge, tmp_path):
    bridge = make_bridge(*enable(tmp_path))
    q = f"ops {uuid.uuid4().hex[:6]}"
    with requests.Session() as session:
        ask(bridge, q, session)
        requests.post(bridge.url + "/api/generate", timeout=30,
                      json={"model": "llama3.2", "prompt": q, "stream": False})
        info = stats(tmp_path)
        assert info["entries"] == 2 and info["models"] == {"llama3.2": 1, MODEL: 1}
        human = cache_command("stats", "--cache-dir", str(tmp_path))
        assert "entries: 2" in human.stdout and "qwen3: 1" in human.stdout
        purged = cache_command("purge", "--model", MODEL, "--cache-dir", str(tmp_path))
        assert purged.returncode == 0 and "purged 1 entries" in purged.stdout
        assert stats(tmp_path)["models"] == {"llama3.2": 1}
        # the worker that holds the answer in memory drops it too
        assert poll(lambda: ask(bridge, q, session).headers["x-cache"] == "MISS")
    assert cache_command("purge", "--cache-dir", str(tmp_path)).returncode == 0
    assert stats(tmp_path)["entries"] == 0
    missing = cache_command("stats", "--cache-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no cache file" in missing.stderr


@pytest.mark.parametrize("flag, value", [("--cache-ttl", "10"),
                                         ("--cache-max-entries", "100"),
                                         ("--cache-memory-entries", "-1"),
                                         ("--cache-hot-threshold", "zero")])
def test_bad_cache_flags_stop_with_one_line(flag, value):
    done = subprocess.run([sys.executable, "-m", "bridge", "--enable-cache", flag, value],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and flag in done.stderr and value in done.stderr
