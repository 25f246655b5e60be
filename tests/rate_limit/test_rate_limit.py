"""The instance-wide token bucket (`-r`): one limit for all workers, 429 with OpenAI's
rate-limit headers, cache hits and operations endpoints never limited, bounded waits."""

from __future__ import annotations

import multiprocessing
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bridge.core.settings import SETTINGS, SettingError, load
from bridge.rate_limit.local_bucket import SharedBucket
from bridge.rate_limit.stage import duration_text
from bridge.serve.processes import start_bridge

CACHE_LANDED = any(setting.name == "enable_cache" for setting in SETTINGS)
RESET = re.compile(r"^\d+ms$|^\d+(\.\d+)?s$|^\d+m\d+s$")


def chat(text: str) -> dict:
    return {"model": "qwen2.5", "messages": [{"role": "user", "content": text}]}


def send_all(url: str, bodies: list[dict], path: str = "/v1/chat/completions",
             threads: int = 32) -> tuple[list[requests.Response], float]:
    """POST every body at once (as fast as the client can); the answers and elapsed seconds."""
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(lambda body: requests.post(url + path, json=body, timeout=30),
                                bodies))
    return answers, time.monotonic() - started


def assert_rate_limited(answer: requests.Response, rate: int) -> None:
    assert answer.status_code == 429
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.headers["x-ratelimit-limit-requests"] == str(rate)
    assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    assert RESET.match(answer.headers["x-ratelimit-reset-requests"])


@pytest.fixture(scope="module")
def limited(standin_server, tmp_path_factory):
    """4 workers sharing one bucket of 10 calls per second (and the cache, once it exists)."""
    flags = ["-r", "10"]
    if CACHE_LANDED:
        flags += ["--enable-cache", "--cache-dir", str(tmp_path_factory.mktemp("cache"))]
    with start_bridge(*flags, upstream=standin_server.url, workers=4,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


def test_a_burst_of_100_gets_the_instance_rate_not_the_workers_rate(limited, standin):
    cached = chat("a question asked before")
    if CACHE_LANDED:
        assert requests.post(limited.url + "/v1/chat/completions", json=cached).ok
        time.sleep(1.2)  # the bucket refills
    fresh = [chat(f"question {n}") for n in range(100)]
    bodies = [body for n, body in enumerate(fresh)
              for body in ([body, cached] if CACHE_LANDED and n % 3 == 0 else [body])]
    before = standin.count()

    answers, elapsed = send_all(limited.url, bodies)

    calls = standin.count() - before
    assert calls <= 10 + 10 * elapsed
    fresh_answers = [a for body, a in zip(bodies, answers, strict=True) if body is not cached]
    served = [a for a in fresh_answers if a.status_code == 200]
    refused = [a for a in fresh_answers if a.status_code != 200]
    assert len(served) >= 10 and len(refused) > 0
    assert calls == len(served)  # a refused request never reaches the upstream
    for answer in refused:
        assert_rate_limited(answer, 10)
        error = answer.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert "rate limit" in error["message"]
    hits = [a for body, a in zip(bodies, answers, strict=True) if body is cached]
    assert all(a.status_code == 200 for a in hits)  # cache hits take no token


def test_the_ollama_surface_gets_its_own_error_shape(limited, standin):
    answers, _ = send_all(limited.url, [chat(f"native {n}") | {"stream": False}
                                        for n in range(30)], path="/api/chat")
    refused = [a for a in answers if a.status_code == 429]
    assert refused
    assert_rate_limited(refused[0], 10)
    assert isinstance(refused[0].json()["error"], str)


def test_operations_endpoints_are_never_limited(limited, standin):
    send_all(limited.url, [chat(f"drain {n}") for n in range(20)])  # empty the bucket
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda path: requests.get(limited.url + path, timeout=10),
                                ["/health"] * 30 + ["/ready"] * 5 + ["/metrics"] * 5))
    assert [a.status_code for a in answers] == [200] * 40


def test_a_bounded_wait_lets_a_short_burst_queue(make_bridge, standin):
    bridge = make_bridge("-r", "5", "--rate-limit-wait", "3000", workers=2)
    answers, elapsed = send_all(bridge.url, [chat(f"queued {n}") for n in range(12)])
    assert [a.status_code for a in answers] == [200] * 12
    assert standin.count() == 12 and standin.count() <= 5 + 5 * elapsed

    answers, elapsed = send_all(bridge.url, [chat(f"too many {n}") for n in range(40)])
    refused = [a for a in answers if a.status_code == 429]
    assert refused, "more than the wait can absorb must be refused"
    assert_rate_limited(refused[0], 5)


def _take_many(path: str, results: multiprocessing.Queue) -> None:
    bucket = SharedBucket(path, rate=20, burst=20)
    results.put(sum(bucket.take().admitted for _ in range(300)))


def test_processes_draw_from_one_bucket(tmp_path):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    started = time.monotonic()
    workers = [context.Process(target=_take_many, args=(tmp_path / "bucket", results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    admitted = sum(results.get(timeout=30) for _ in workers)
    for worker in workers:
        worker.join(10)
    assert 20 <= admitted <= 20 + 20 * (time.monotonic() - started)


def test_reset_durations_are_written_like_openai():
    assert duration_text(0.0204) == "21ms"
    assert duration_text(1.5) == "1.5s"
    assert duration_text(360) == "6m0s"


@pytest.mark.parametrize("argv, flag", [
    (["-r", "65536"], "--rate-limit"), (["--rate-limit-wait", "-5"], "--rate-limit-wait"),
    (["--max-concurrency", "x"], "--max-concurrency"), (["--max-queue", "10001"], "--max-queue"),
    (["--max-queue-wait", "1.5"], "--max-queue-wait"), (["--log-format", "xml"], "--log-format"),
])
def test_bad_traffic_and_log_flags_are_refused_in_one_line(argv, flag):
    with pytest.raises(SettingError) as refused:
        load(argv, environ={})
    assert flag in str(refused.value) and "\n" not in str(refused.value)
