"""GPU-slot admission (`--max-concurrency`): an instance-wide cap on upstream requests in
flight, held for the whole stream, with a bounded queue and a bounded wait."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from bridge.admission.local_slots import LockSlots
from bridge.serve.processes import start_bridge

SLOW_FIRST_TOKEN = {"x-standin-first-token-delay": "3"}


@pytest.fixture(scope="module")
def capped(standin_server, tmp_path_factory):
    """4 workers, 2 upstream slots for all of them, 2 queue places, 2 s of waiting."""
    with start_bridge("--max-concurrency", "2", "--max-queue", "2", "--max-queue-wait", "2000",
                      upstream=standin_server.url, workers=4,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


def stream_chat(url: str, text: str) -> str | openai.APIStatusError:
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0) as client:
        try:
            chunks = client.chat.completions.create(
                model="qwen2.5", stream=True, messages=[{"role": "user", "content": text}])
            return "".join(chunk.choices[0].delta.content or ""
                           for chunk in chunks if chunk.choices)
        except openai.APIStatusError as exc:
            return exc


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def assert_busy(error: object) -> None:
    assert isinstance(error, openai.APIStatusError) and error.status_code == 503
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.json()["error"]["code"] == "upstream_busy"


def test_slots_cap_the_instance_and_queued_requests_complete(capped, standin):
    # The think filter asks /api/show once per model (whether it can reason), beside the
    # slots: asked before the burst, so that the stand-in counts model requests alone.
    assert stream_chat(capped.url, "warm up") == "Echo: warm up"
    standin.reset()
    standin.configure(first_token_delay=0.6, token_delay=0.01)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda n: stream_chat(capped.url, f"slot {n}"), range(6)))

    served = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if not isinstance(r, str)]
    assert standin.max_in_flight <= 2
    assert len(served) == 4 and all(text.startswith("Echo: slot") for text in served)
    assert len(refused) == 2  # 2 in flight + 2 queued; the queue is full for the rest
    for error in refused:
        assert_busy(error)
    assert standin.count() == 4


def test_a_wait_that_runs_out_gets_503_with_retry_after(capped, standin):
    body = {"model": "qwen2.5", "stream": True,
            "messages": [{"role": "user", "content": "hold the slot"}]}
    with ThreadPoolExecutor(2) as pool:
        holders = [pool.submit(requests.post, capped.url + "/v1/chat/completions", json=body,
                               headers=SLOW_FIRST_TOKEN, timeout=30) for _ in range(2)]
        wait_for(lambda: standin.in_flight == 2)
        late = stream_chat(capped.url, "too late")
        assert_busy(late)
        assert "within 2s" in late.response.json()["error"]["message"]
        assert [holder.result().status_code for holder in holders] == [200, 200]
    assert standin.max_in_flight == 2


def test_a_client_that_leaves_gives_its_slot_back(capped, standin):
    standin.configure(token_delay=1.0)  # each stream would hold its slot for many seconds
    body = {"model": "qwen2.5", "stream": True,
            "messages": [{"role": "user", "content": "a long answer please"}]}
    for _ in range(2):
        with requests.post(capped.url + "/v1/chat/completions", json=body, stream=True,
                           timeout=30) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the first chunk, then hang up
    wait_for(lambda: standin.in_flight == 0)
    standin.configure(token_delay=0.0)
    assert stream_chat(capped.url, "my turn").startswith("Echo: my turn")


def _hold_one(directory: str, results: multiprocessing.Queue) -> None:
    slots = LockSlots(directory, "slot", 3)
    held = [slots.try_take(), slots.try_take()]
    results.put(held)
    time.sleep(1.0)


def test_slots_are_exclusive_across_processes(tmp_path):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_hold_one, args=(tmp_path, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    taken = [index for _ in workers for index in results.get(timeout=10) if index is not None]
    for worker in workers:
        worker.join(10)
    assert sorted(taken) == [0, 1, 2]  # 4 asked, 3 exist; none given twice
    assert LockSlots(tmp_path, "slot", 3).try_take() is not None  # freed when the holders exit
