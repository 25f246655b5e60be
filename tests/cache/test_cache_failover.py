"""Single flight with routing (`--upstreams`): followers wait as long as their leader may
take, fail-over included. The first upstream hangs until its own timeout, the second
answers; identical requests arriving meanwhile follow the leader (HIT-FLIGHT) instead of
giving up on it and each calling the second upstream."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest
import requests
from helpers import show_upstream_is_open, wait_for

from bridge.ollama_standin import StandIn
from bridge.ollama_standin.config import Fault
from bridge.serve.processes import Process, start_bridge

FOLLOWERS = 4
# The bridge's own -t and retries would have the followers give up after 1 s + 5 s; the
# first upstream's timeout alone is longer.
HANGING_TIMEOUT_MS = 7000


@pytest.fixture(scope="module")
def boxes() -> Iterator[tuple[StandIn, StandIn]]:
    first, second = StandIn().start(), StandIn().start()
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(scope="module")
def bridge(boxes: tuple[StandIn, StandIn], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Process]:
    first, second = boxes
    file = tmp_path_factory.mktemp("upstreams") / "upstreams.toml"
    file.write_text(f'''
[[upstream]]
name = "first"
url = "{first.url}"
models = ["qwen*"]
model_map = {{ "solo" = "qwen2.5" }}
timeout_ms = {HANGING_TIMEOUT_MS}

[[upstream]]
name = "second"
url = "{second.url}"
models = ["qwen*"]
timeout_ms = 60000
''')
    # one worker: its first call for a model both serve goes to the first upstream (ties
    # rotate from it)
    with start_bridge("--upstreams", str(file), "--enable-cache", "--cache-dir",
                      str(tmp_path_factory.mktemp("cache")), "-t", "1000", "-a", "0",
                      "--disable-think-filter", upstream=None, workers=1,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


def test_followers_wait_for_a_leader_failing_over_and_share_its_one_call(
        bridge: Process, boxes: tuple[StandIn, StandIn]) -> None:
    first, second = boxes
    # a name only the first upstream serves (no turn of the balancer's rotation taken):
    # anonymous callers are answered, so they share the cache
    show_upstream_is_open(bridge, model="solo")
    first.reset()
    second.reset()
    first.push_fault(Fault(kind="hang", delay=60, path="/api/chat"))
    body = {"model": "qwen2.5", "stream": False,
            "messages": [{"role": "user", "content": f"question {uuid.uuid4().hex}"}]}

    def ask() -> requests.Response:
        return requests.post(bridge.url + "/api/chat", json=body, timeout=120)

    with ThreadPoolExecutor(FOLLOWERS + 1) as pool:
        leader = pool.submit(ask)
        wait_for(lambda: first.count("/api/chat") == 1, 30, "the leader's call to hang")
        followers = [pool.submit(ask) for _ in range(FOLLOWERS)]
        answers = [leader.result(), *(follower.result() for follower in followers)]
    assert [answer.status_code for answer in answers] == [200] * (FOLLOWERS + 1)
    assert answers[0].headers["x-cache"] == "MISS"
    assert [answer.headers["x-cache"] for answer in answers[1:]] == ["HIT-FLIGHT"] * FOLLOWERS
    assert first.count("/api/chat") == 1
    assert second.count("/api/chat") == 1  # the one generation, shared by every client
    assert len({answer.json()["message"]["content"] for answer in answers}) == 1
