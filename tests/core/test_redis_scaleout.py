"""Scale-out on Redis (`--redis-url`): two bridge instances (2 gevent workers each) share
one cache, one rate limit, one concurrency cap, one async job queue and key revocations
through a real `redis-server` on a free loopback port; when Redis stops they go on alone
(zero 5xx, `/ready` says degraded) and share again once it is back, without a restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from helpers import keys_command, normalized, show_upstream_is_open, wait_for

from bridge.ollama_standin import StandIn
from bridge.serve.processes import ROOT, Process, start_bridge, start_redis

# A loaded CI machine (3 test processes, many bridges) can answer slower than the default
# 50 ms; the bound itself is tested in test_redis_link.py. `--redis-url` comes last: the
# URL follows it.
REDIS = ("--redis-timeout", "1000", "--redis-url")

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs Debian's redis-server (.ci/run installs it)")
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    with start_redis(tmp_path_factory.mktemp("redis")) as process:
        yield process


@pytest.fixture
def pair(make_bridge: Callable[..., Process], redis_server: Process
         ) -> Callable[..., tuple[Process, Process]]:
    """Two instances sharing the Redis under a prefix of their own (a fresh namespace)."""
    def make(*flags: str, **kwargs: object) -> tuple[Process, Process]:
        prefix = f"test-{uuid.uuid4().hex[:8]}"
        return tuple(make_bridge(*REDIS, redis_server.url, "--redis-prefix", prefix,
                                 *flags, **kwargs) for _ in range(2))  # type: ignore[return-value]
    return make


def chat(text: str, stream: bool = False) -> dict:
    return {"model": "qwen3", "stream": stream, "messages": [{"role": "user", "content": text}]}


def cache_pair(pair: Callable[..., tuple[Process, Process]], tmp_path: Path
               ) -> tuple[Process, Process]:
    a, b = pair("--enable-cache", "--cache-dir", str(tmp_path / "cache"))
    for bridge in (a, b):
        show_upstream_is_open(bridge)
    return a, b


@pytest.mark.parametrize("stream", [False, True])
def test_a_miss_on_one_instance_is_a_hit_on_the_other(pair, standin: StandIn, tmp_path: Path,
                                                     stream: bool) -> None:
    a, b = cache_pair(pair, tmp_path)
    for round_ in range(3):  # alternating: each question is asked first on one, then the other
        first, second = (a, b) if round_ % 2 == 0 else (b, a)
        body = chat(f"shared {uuid.uuid4().hex}", stream)
        calls = len(standin.requests)
        missed = requests.post(first.url + CHAT, json=body, timeout=30)
        hit = requests.post(second.url + CHAT, json=body, timeout=30)
        assert (missed.status_code, hit.status_code) == (200, 200)
        assert missed.headers["x-cache"] == "MISS"
        assert hit.headers["x-cache"] == "HIT-REDIS"
        assert len(standin.requests) == calls + 1  # one upstream call for both instances
        if stream:
            assert hit.headers["content-type"].startswith("text/event-stream")
            assert hit.text.rstrip().endswith("data: [DONE]")
            assert hit.text.count("data: ") == missed.text.count("data: ")
        else:
            assert normalized(hit.json()["choices"]) == normalized(missed.json()["choices"])


def test_identical_misses_on_both_instances_make_one_upstream_call(
        pair, standin: StandIn, tmp_path: Path) -> None:
    a, b = cache_pair(pair, tmp_path)
    body = chat(f"single flight {uuid.uuid4().hex}")
    slow = {"x-standin-first-token-delay": "1.0"}
    calls = len(standin.requests)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: requests.post((a, b)[i % 2].url + CHAT, json=body,
                                                        headers=slow, timeout=30), range(6)))
    assert [answer.status_code for answer in answers] == [200] * 6
    assert len(standin.requests) == calls + 1
    contents = {answer.json()["choices"][0]["message"]["content"] for answer in answers}
    assert len(contents) == 1


def test_the_rate_limit_holds_for_both_instances_together(pair, standin: StandIn) -> None:
    a, b = pair("-r", "10")
    refused = 0
    started = time.monotonic()

    def send(index: int) -> int:
        nonlocal refused
        statuses = []
        while time.monotonic() - started < 5.0:
            answer = requests.post((a, b)[index % 2].url + CHAT, timeout=30,
                                   json=chat(f"rate {uuid.uuid4().hex}"))
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert answer.headers["retry-after"]
                refused += 1
                time.sleep(0.02)
        return statuses.count(200)

    with ThreadPoolExecutor(6) as pool:
        admitted = sum(pool.map(send, range(6)))
    elapsed = time.monotonic() - started
    # a burst of 10, then 10 per second for both instances together (each alone would
    # have let as many through again)
    assert admitted <= 10 + 10 * elapsed + 2, (admitted, elapsed)
    assert refused > 0


def test_max_concurrency_holds_across_both_instances(pair, standin: StandIn) -> None:
    a, b = pair("--max-concurrency", "2", "--max-queue", "16", "--max-queue-wait", "60000")
    standin.configure(first_token_delay=0.4)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: requests.post(
            (a, b)[i % 2].url + CHAT, json=chat(f"capped {uuid.uuid4().hex}"), timeout=90),
            range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    assert standin.max_in_flight == 2  # not 2 per instance


def test_a_slot_held_by_an_instance_killed_is_given_back_after_its_lease(
        make_bridge, redis_server: Process, standin: StandIn) -> None:
    flags = (*REDIS, redis_server.url, "--redis-prefix", f"lease-{uuid.uuid4().hex[:8]}",
             "--max-concurrency", "1", "--max-queue", "4", "--max-queue-wait", "30000")
    a, b = make_bridge(*flags), make_bridge(*flags)
    standin.configure(token_delay=5.0)  # the call on A holds the one slot for a long time
    with ThreadPoolExecutor(1) as pool:
        pool.submit(requests.post, a.url + CHAT, json=chat("hold it", True), timeout=60)
        wait_for(lambda: standin.in_flight == 1, what="A to hold the slot")
        os.killpg(a.pid, signal.SIGKILL)
        a.proc.wait(5)
        standin.configure(token_delay=0.0)
        answer = requests.post(b.url + CHAT, json=chat("after the lease"), timeout=60)
    assert answer.status_code == 200


def test_an_async_job_submitted_to_one_instance_is_fetched_from_the_other(
        pair, standin: StandIn, tmp_path: Path) -> None:
    a, b = pair("--enable-async-request", "--state-dir", str(tmp_path / "state"))
    fingerprint = f"job-{uuid.uuid4().hex}"
    body = {**chat("async across instances"), "request_fingerprint": fingerprint}
    first = requests.post(a.url + CHAT, json=body, timeout=30,
                          headers={"x-standin-token-delay": "0.05"})
    assert first.status_code == 202
    done = wait_for(lambda: (lambda answer: answer if answer.status_code != 202 else None)(
        requests.get(b.url + first.headers["location"], timeout=10)), 30, "the job on B")
    assert done.status_code == 200
    assert done.json()["choices"][0]["message"]["content"]


def test_an_async_job_of_an_instance_killed_with_sigkill_is_finished_by_the_other(
        make_bridge, redis_server: Process, standin: StandIn, tmp_path: Path) -> None:
    flags = (*REDIS, redis_server.url, "--redis-prefix", f"jobs-{uuid.uuid4().hex[:8]}",
             "--enable-async-request")
    a = make_bridge(*flags, "--state-dir", str(tmp_path / "a"))
    fingerprint = f"job-{uuid.uuid4().hex}"
    body = {**chat("a long async job"), "request_fingerprint": fingerprint}
    # a whole answer that takes its time (the token delay paces streams only): the job is
    # still running when A is killed, whenever the runner claims it
    standin.configure(first_token_delay=60.0)
    first = requests.post(a.url + CHAT, json=body, timeout=30)
    assert first.status_code == 202
    wait_for(lambda: requests.get(a.url + first.headers["location"], timeout=10)
             .json().get("status") == "running", 60, "A to run the job")
    os.killpg(a.pid, signal.SIGKILL)  # the master and its workers, mid-job
    a.proc.wait(30)
    standin.configure(first_token_delay=0.0)
    b = make_bridge(*flags, "--state-dir", str(tmp_path / "b"))
    done = wait_for(lambda: (lambda answer: answer if answer.status_code != 202 else None)(
        requests.get(b.url + first.headers["location"], timeout=30)), 90, "B to finish it")
    assert done.status_code == 200
    assert done.json()["choices"][0]["message"]["content"]


def test_a_key_revoked_through_one_instance_is_refused_by_the_other_within_a_second(
        pair, redis_server: Process, standin: StandIn, tmp_path: Path) -> None:
    state_a, state_b = tmp_path / "a", tmp_path / "b"
    done = keys_command(state_a, "create", "leaver")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    state_b.mkdir()
    shutil.copy(state_a / "keys.sqlite3", state_b / "keys.sqlite3")  # as an operator would
    key_file = tmp_path / "upstream.key"
    key_file.write_text("sk-upstream-test\n")
    prefix = f"keys-{uuid.uuid4().hex[:8]}"
    a, b = (start_bridge("--enable-shared-mode", "--api-key-file", str(key_file),
                         "--state-dir", str(state), *REDIS, redis_server.url,
                         "--redis-prefix", prefix, upstream=standin.url, workers=2,
                         log_dir=tmp_path) for state in (state_a, state_b))
    with a, b:
        auth = {"authorization": f"Bearer {key}"}
        for bridge in (a, b):
            assert requests.post(bridge.url + CHAT, json=chat("hi"), headers=auth,
                                 timeout=30).status_code == 200
        revoke = subprocess.run(
            [sys.executable, "-m", "bridge", "keys", "--state-dir", str(state_a),
             "--redis-url", redis_server.url, "--redis-prefix", prefix, "revoke", "leaver"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert revoke.returncode == 0, revoke.stderr
        revoked = time.monotonic()
        statuses = []
        while time.monotonic() - revoked < 2.0:
            sent = time.monotonic() - revoked
            status = requests.post(b.url + CHAT, json=chat("still?"), headers=auth,
                                   timeout=30).status_code
            statuses.append(status)
            assert status == 401 or sent < 1.0, f"B accepted it {sent:.2f}s after revocation"
            time.sleep(0.05)
        assert statuses[-1] == 401
        assert key not in a.log() + b.log()


def test_redis_stopping_mid_traffic_costs_no_request_and_sharing_resumes(
        make_bridge, standin: StandIn, tmp_path: Path) -> None:
    redis = start_redis(tmp_path)
    port = int(redis.url.rsplit(":", 1)[1].split("/")[0])
    try:
        flags = (*REDIS, redis.url, "--enable-cache", "--cache-dir", str(tmp_path / "c"),
                 "-r", "500", "--max-concurrency", "8")
        a, b = make_bridge(*flags), make_bridge(*flags)
        for bridge in (a, b):
            show_upstream_is_open(bridge)
        statuses: list[int] = []
        stop_at = time.monotonic() + 3.0

        def traffic(index: int) -> None:
            while time.monotonic() < stop_at:
                body = chat(f"fault {index % 3} {int(time.monotonic() * 4)}", index % 2 == 0)
                answer = requests.post((a, b)[index % 2].url + CHAT, json=body, timeout=30)
                answer.content  # noqa: B018 - read the whole stream
                statuses.append(answer.status_code)
                index += 1

        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(traffic, index) for index in range(4)]
            time.sleep(1.0)
            redis.stop()  # mid-traffic
            for future in running:
                future.result()
        assert statuses and set(statuses) == {200}
        for bridge in (a, b):
            wait_for(lambda bridge=bridge: requests.get(bridge.url + "/ready", timeout=10)
                     .json().get("redis") == "degraded", 10, "/ready to say degraded")
        assert "Redis at" in a.log() and "unreachable" in a.log()

        redis = start_redis(tmp_path, port=port)  # back, empty, on the same address
        for bridge in (a, b):
            wait_for(lambda bridge=bridge: requests.get(bridge.url + "/ready", timeout=10)
                     .json().get("redis") == "ok", 10, "/ready to say ok again")
        body = chat(f"after the outage {uuid.uuid4().hex}")

        def shared() -> bool:
            question = {**body, "messages": [{"role": "user",
                                              "content": f"again {uuid.uuid4().hex}"}]}
            missed = requests.post(a.url + CHAT, json=question, timeout=30)
            hit = requests.post(b.url + CHAT, json=question, timeout=30)
            return missed.status_code == 200 and hit.headers.get("x-cache") == "HIT-REDIS"
        wait_for(shared, 10, "the instances to share again")
    finally:
        redis.stop()
