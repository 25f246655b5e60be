"""What a cache entry cost the upstream, and what each hit saves: the entry records the
upstream's time (and Ollama's total_duration and eval_count) at store time, each hit adds
it to the "saved" counters, from the memory tier and from the disk tier after a restart."""

from __future__ import annotations

import sqlite3
import uuid
import zlib

import pytest
import requests

from bridge.cache.entry import HEADER_SIZE, Entry, decode_entry, encode_entry
from tests.helpers import metric_total, show_upstream_is_open

SAVED_SECONDS = "bridge_cache_upstream_seconds_saved_total"
SAVED_GPU = "bridge_cache_gpu_seconds_saved_total"
SAVED_TOKENS = "bridge_cache_tokens_saved_total"


def stored_entry(cache_dir) -> Entry:
    with sqlite3.connect(cache_dir / "responses.sqlite") as conn:
        values = [row[0] for row in conn.execute("SELECT value FROM responses")]
    assert len(values) == 1
    return decode_entry(bytes(values[0]))


def saved(url: str, tier: str) -> tuple[float, float, float]:
    return (metric_total(url, SAVED_SECONDS, tier=tier), metric_total(url, SAVED_GPU, tier=tier),
            metric_total(url, SAVED_TOKENS, tier=tier))


def test_each_hit_saves_the_recorded_cost_from_memory_and_from_disk(make_bridge, standin,
                                                                     tmp_path):
    standin.configure(token_delay=0.01)  # an upstream that takes a visible time
    cache_dir = tmp_path / "cache"
    flags = ("--enable-cache", "--cache-dir", str(cache_dir))
    body = {"model": "llama3.2", "stream": False,
            "messages": [{"role": "user", "content": f"cost {uuid.uuid4().hex}"}]}
    bridge = make_bridge(*flags, workers=1)
    first = requests.post(bridge.url + "/api/chat", json=body, timeout=30)
    assert first.headers["x-cache"] == "MISS"
    reported = first.json()
    entry = stored_entry(cache_dir)
    assert entry.upstream_seconds >= 0.01
    assert entry.gpu_seconds == pytest.approx(reported["total_duration"] / 1e9)
    assert entry.tokens == reported["eval_count"] > 0
    assert saved(bridge.url, "memory") == (0, 0, 0)

    for hits in (1, 2):
        answer = requests.post(bridge.url + "/api/chat", json=body, timeout=30)
        assert answer.headers["x-cache"] == "HIT-MEMORY"
        seconds, gpu, tokens = saved(bridge.url, "memory")
        assert seconds == pytest.approx(hits * entry.upstream_seconds, abs=1e-5)
        assert gpu == pytest.approx(hits * entry.gpu_seconds)
        assert tokens == hits * entry.tokens

    bridge.stop()  # a new bridge on the same file: its first answer comes from disk
    again = make_bridge(*flags, workers=1)
    show_upstream_is_open(again)
    answer = requests.post(again.url + "/api/chat", json=body, timeout=30)
    assert answer.headers["x-cache"] == "HIT-DISK"
    assert saved(again.url, "disk") == (pytest.approx(entry.upstream_seconds, abs=1e-6),
                                        pytest.approx(entry.gpu_seconds), entry.tokens)


def test_a_stream_without_ollama_figures_saves_its_wall_time(make_bridge, standin, tmp_path):
    """The OpenAI surface reports no total_duration: the GPU time saved is then the
    upstream's wall time, and the tokens come from the stream's usage."""
    standin.configure(token_delay=0.01)
    cache_dir = tmp_path / "cache"
    bridge = make_bridge("--enable-cache", "--cache-dir", str(cache_dir), workers=1)
    body = {"model": "llama3.2", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"stream {uuid.uuid4().hex}"}]}
    assert requests.post(bridge.url + "/v1/chat/completions", json=body,
                         timeout=30).headers["x-cache"] == "MISS"
    entry = stored_entry(cache_dir)
    assert entry.gpu_seconds is None and entry.upstream_seconds >= 0.01 and entry.tokens > 0
    assert requests.post(bridge.url + "/v1/chat/completions", json=body,
                         timeout=30).headers["x-cache"] == "HIT-MEMORY"
    seconds, gpu, tokens = saved(bridge.url, "memory")
    assert seconds == gpu == pytest.approx(entry.upstream_seconds, abs=1e-5)
    assert tokens == entry.tokens


def test_entries_stored_before_the_cost_existed_still_decode():
    old = Entry(surface="openai", endpoint="chat", model="m", created=1.0, body=b"{}")
    decoded = decode_entry(encode_entry(old))  # no cost member, as before
    assert (decoded.upstream_seconds, decoded.gpu_seconds, decoded.tokens) == (0.0, None, 0)
    assert b"cost" not in zlib.decompress(encode_entry(old)[HEADER_SIZE:])
    priced = Entry(surface="openai", endpoint="chat", model="m", created=1.0, body=b"{}",
                   upstream_seconds=1.25, gpu_seconds=0.75, tokens=42)
    decoded = decode_entry(encode_entry(priced))
    assert (decoded.upstream_seconds, decoded.gpu_seconds, decoded.tokens) == (1.25, 0.75, 42)
