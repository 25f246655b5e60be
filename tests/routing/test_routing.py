"""Routing across upstreams (`--upstreams`), end to end: a real gunicorn bridge in front
of three stand-ins, two "Ollama" GPU boxes serving `qwen*` and an "API" that wants a
bearer key for `deepseek-*`, driven with the `openai` and `ollama` clients."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Iterator

import ollama
import openai
import pytest
import requests

from bridge.ollama_standin import StandIn
from bridge.ollama_standin.config import Fault
from bridge.serve.processes import Process, start_bridge
from tests.helpers import wait_for

API_KEY = "sk-deepseek-upstream-0123456789abcdef"
CLIENT_TOKEN = "client-own-token-42"
CHAT = [{"role": "user", "content": "hello"}]


class Boxes:
    """The three upstreams and the file that names them."""

    def __init__(self, directory: Path):
        self.a, self.b = StandIn().start(), StandIn().start()
        self.api = StandIn()
        self.api.config.api_key = API_KEY
        self.api._initial_config.api_key = API_KEY  # reset() keeps it
        self.api.start()
        self.file = directory / "upstreams.toml"
        self.file.write_text(f'''
[[upstream]]
name = "gpu-a"
url = "{self.a.url}"
models = ["qwen*", "llama*"]
max_concurrency = 4
model_map = {{ "gpt-4o-mini" = "qwen2.5:latest" }}

[[upstream]]
name = "gpu-b"
url = "{self.b.url}"
models = ["qwen*"]
max_concurrency = 4

[[upstream]]
name = "deepseek"
url = "{self.api.url}"
models = ["deepseek-*"]
api_key_env = "TEST_DEEPSEEK_KEY"
''')

    @property
    def all(self) -> tuple[StandIn, StandIn, StandIn]:
        return self.a, self.b, self.api

    def reset(self) -> None:
        for box in self.all:
            box.start()  # a test may have stopped one
            box.reset()

    def model_requests(self, box: StandIn) -> list:
        return [r for r in box.requests if r.path in ("/v1/chat/completions", "/api/chat")]


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boxes]:
    made = Boxes(tmp_path_factory.mktemp("upstreams"))
    yield made
    for box in made.all:
        box.stop()


@pytest.fixture(scope="module")
def routed(boxes: Boxes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A bridge routing by the file, without -o: unmatched models are 404."""
    with start_bridge("--upstreams", str(boxes.file), "--disable-think-filter", "-d",
                      upstream=None, env={"TEST_DEEPSEEK_KEY": API_KEY},
                      log_dir=tmp_path_factory.mktemp("routed")) as process:
        yield process


@pytest.fixture
def fresh(boxes: Boxes) -> Boxes:
    boxes.reset()
    return boxes


def sdk(bridge: Process) -> openai.OpenAI:
    return openai.OpenAI(base_url=bridge.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0,
                         timeout=30)


def ready_when(bridge: Process, status: int, down: tuple[str, ...] = ()) -> requests.Response:
    """The first `/ready` answer with `status` naming `down` among those down (bounded
    wait: a probe's answer serves every `/ready` for a second)."""
    def answer() -> list[requests.Response]:
        ready = requests.get(bridge.url + "/ready", timeout=10)
        return [ready] if ready.status_code == status and set(down) <= set(
            ready.json()["down"]) else []

    return wait_for(answer, what=f"/ready to answer {status}, {down} down")[0]


def test_each_model_reaches_its_upstream_with_its_key_and_only_that_key(routed, fresh):
    client = sdk(routed)
    qwen = client.chat.completions.create(model="qwen3:latest", messages=CHAT)
    deep = client.chat.completions.create(model="deepseek-r1:7b", messages=CHAT)
    native = ollama.Client(host=routed.url, headers={"authorization": f"Bearer {CLIENT_TOKEN}"}
                           ).chat(model="deepseek-coder:latest", messages=CHAT)
    assert qwen.choices[0].message.content and deep.choices[0].message.content
    assert native.message.content
    gpu = fresh.model_requests(fresh.a) + fresh.model_requests(fresh.b)
    api = fresh.model_requests(fresh.api)
    assert [r.json()["model"] for r in gpu] == ["qwen3:latest"]
    assert sorted(r.json()["model"] for r in api) == ["deepseek-coder:latest", "deepseek-r1:7b"]
    # the box without a key of its own gets the client's credentials; the API only its key
    assert gpu[0].headers["authorization"] == f"Bearer {CLIENT_TOKEN}"
    assert {r.headers["authorization"] for r in api} == {f"Bearer {API_KEY}"}
    everything_the_boxes_saw = repr([r.as_dict() for r in fresh.a.requests + fresh.b.requests])
    assert API_KEY not in everything_the_boxes_saw


def test_a_renamed_model_goes_upstream_under_its_name_and_comes_back_as_asked(routed, fresh):
    answer = sdk(routed).chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    stream = sdk(routed).chat.completions.create(model="gpt-4o-mini", messages=CHAT,
                                                 stream=True)
    chunks = list(stream)
    sent = [r.json()["model"] for r in fresh.model_requests(fresh.a)]
    assert sent == ["qwen2.5:latest", "qwen2.5:latest"]  # only gpu-a has the alias
    assert answer.model == "gpt-4o-mini"
    assert chunks and {chunk.model for chunk in chunks} == {"gpt-4o-mini"}


def test_an_unknown_model_is_a_404_in_each_surfaces_shape(routed, fresh):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(routed).chat.completions.create(model="gpt-5-ultra", messages=CHAT)
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"
    with pytest.raises(ollama.ResponseError) as native:
        ollama.Client(host=routed.url).chat(model="gpt-5-ultra", messages=CHAT)
    assert native.value.status_code == 404 and "gpt-5-ultra" in native.value.error
    raw = requests.post(routed.url + "/api/generate", timeout=10,
                        json={"model": "gpt-5-ultra", "prompt": "hi"})
    assert raw.status_code == 404 and set(raw.json()) == {"error"}
    assert sum(box.count() for box in fresh.all) == 0


def test_unmatched_models_go_to_o_when_it_is_given(boxes, make_bridge, standin):
    bridge = make_bridge("--upstreams", str(boxes.file), env={"TEST_DEEPSEEK_KEY": API_KEY})
    boxes.reset()
    answer = sdk(bridge).chat.completions.create(model="gpt-oss:20b", messages=CHAT)
    assert answer.choices[0].message.content
    assert [r.json()["model"] for r in standin.requests] == ["gpt-oss:20b"]
    assert sum(box.count() for box in boxes.all) == 0


def test_model_lists_are_merged_filtered_renamed_and_listed_once(routed, fresh):
    listed = [model.id for model in sdk(routed).models.list()]
    native = [model.model for model in ollama.Client(host=routed.url).list().models]
    expected = {"qwen3:latest", "qwen2.5:latest", "llama3.2:latest", "gpt-4o-mini",
                "deepseek-r1:7b", "deepseek-coder:latest"}
    for names in (listed, native):
        assert set(names) == expected  # no all-minilm, no gpt-oss: no pattern serves them
        assert len(names) == len(set(names))  # qwen models of both boxes, once


def test_balancing_spreads_concurrent_requests_within_each_boxs_limit(routed, fresh):
    for box in (fresh.a, fresh.b):
        box.configure(token_delay=0.05)

    def ask(n: int) -> str:
        answer = requests.post(routed.url + "/v1/chat/completions", timeout=60, json={
            "model": "qwen3:latest", "stream": True,
            "messages": [{"role": "user", "content": f"request {n} counts five words"}]})
        return f"{answer.status_code} {answer.text[-40:]}"

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = list(pool.map(ask, range(40)))
    assert all(result.startswith("200") and "[DONE]" in result for result in results), results
    counts = [len(fresh.model_requests(box)) for box in (fresh.a, fresh.b)]
    assert sum(counts) == 40 and min(counts) >= 10, counts
    assert fresh.a.max_in_flight <= 4 and fresh.b.max_in_flight <= 4


def test_a_box_that_dies_fails_over_with_no_failures_and_comes_back_after_its_probe(
        routed, fresh):
    def ask(n: int) -> int:
        return requests.post(routed.url + "/v1/chat/completions", timeout=30, json={
            "model": "qwen3:latest", "messages": [{"role": "user", "content": f"x{n}"}]
        }).status_code

    assert [ask(n) for n in range(6)] == [200] * 6
    fresh.a.stop()
    b_before = fresh.b.count()
    assert [ask(n) for n in range(20)] == [200] * 20  # fail-over: not one failure
    assert fresh.b.count() - b_before >= 20
    ready = requests.get(routed.url + "/ready", timeout=10).json()
    # qwen* still has gpu-b; what only gpu-a serves has no live upstream
    assert ready["down"] == ["gpu-a"] and set(ready["unserved"]) == {"llama*", "gpt-4o-mini"}
    fresh.a.start()  # the same port: the box is back
    wait_for(lambda: ask(0) == 200 and len(fresh.model_requests(fresh.a)) > 0, timeout=20,
             what="gpu-a to get traffic again after its probe")
    assert "upstream 'gpu-a' marked down" in routed.log()
    wait_for(lambda: "upstream 'gpu-a' is back" in routed.log(), timeout=10,
             what="the worker that marked gpu-a down to probe it back")


def test_ready_is_503_naming_what_is_down_when_a_model_has_no_live_upstream(routed, fresh):
    fresh.api.stop()
    ready = ready_when(routed, 503, down=("deepseek",))
    assert "deepseek-*" in ready.json()["unserved"]


def test_no_key_leaks_into_logs_metrics_or_errors(routed, fresh):
    fresh.api.push_fault(Fault("status", status=401, body=f'{{"error":"bad key {API_KEY}"}}'))
    echoed = requests.post(routed.url + "/v1/chat/completions", timeout=10,
                           json={"model": "deepseek-r1:7b", "messages": CHAT})
    sdk(routed).chat.completions.create(model="deepseek-r1:7b", messages=CHAT, stream=True)
    metrics = requests.get(routed.url + "/metrics", timeout=10).text
    ready = requests.get(routed.url + "/ready", timeout=10).text
    assert 'upstream="deepseek"' in metrics
    for text in (echoed.text, metrics, ready, routed.log()):
        assert API_KEY not in text
    assert "upstream=deepseek" in routed.log()


def test_a_cached_answer_does_not_depend_on_the_upstream_that_produced_it(boxes, make_bridge,
                                                                           tmp_path):
    bridge = make_bridge("--upstreams", str(boxes.file), "--enable-cache", "--cache-dir",
                         str(tmp_path / "cache"), upstream=None,
                         env={"TEST_DEEPSEEK_KEY": API_KEY})
    boxes.reset()
    body = {"model": "qwen3:latest", "messages": [{"role": "user", "content": "cache me"}]}
    first = requests.post(bridge.url + "/v1/chat/completions", json=body, timeout=30)
    producer = boxes.a if boxes.model_requests(boxes.a) else boxes.b
    producer.stop()  # the box that answered is gone: the other one would answer now
    again = [requests.post(bridge.url + "/v1/chat/completions", json=body, timeout=30)
             for _ in range(4)]
    assert first.headers["x-cache"] == "MISS"
    assert all(r.headers["x-cache"].startswith("HIT") for r in again), [
        r.headers["x-cache"] for r in again]
    assert {r.json()["choices"][0]["message"]["content"] for r in again} == {
        first.json()["choices"][0]["message"]["content"]}
    assert len(boxes.model_requests(boxes.a)) + len(boxes.model_requests(boxes.b)) == 1


def test_ready_probes_each_upstream_at_most_once_a_second_however_often_it_is_asked(
        boxes, make_bridge):
    bridge = make_bridge("--upstreams", str(boxes.file), upstream=None,
                         env={"TEST_DEEPSEEK_KEY": API_KEY})  # 2 workers share the probes
    boxes.reset()
    asked = 0
    with requests.Session() as session:
        began = time.monotonic()
        while asked < 60 or time.monotonic() - began < 1.5:  # over a second boundary
            assert session.get(bridge.url + "/ready", timeout=10).status_code == 200
            asked += 1
        elapsed = time.monotonic() - began
    for box in boxes.all:
        probes = box.count("/api/version")
        assert 1 <= probes <= elapsed + 1, (probes, asked, elapsed)
    boxes.api.stop()  # a reused answer is at most a second old: the stop is seen
    assert ready_when(bridge, 503, down=("deepseek",)).json()["down"] == ["deepseek"]


def test_ready_probes_a_keyed_o_with_the_shared_mode_key(boxes, make_bridge, standin,
                                                         tmp_path):
    """Shared mode with --upstreams and an -o that wants the bridge's key: -o serves
    requests with it, and its /ready probe carries it too (it was 503 for ever)."""
    shared_key = "sk-shared-mode-upstream-key-0123456789"
    standin.configure(api_key=shared_key)
    bridge = make_bridge("--upstreams", str(boxes.file), "--enable-shared-mode",
                         "--state-dir", str(tmp_path / "state"),
                         env={"TEST_DEEPSEEK_KEY": API_KEY, "BRIDGE_API_KEY": shared_key})
    boxes.reset()
    ready = ready_when(bridge, 200)
    assert ready.json()["status"] == "ready" and ready.json()["down"] == []
    probes = [r for r in standin.requests if r.path == "/api/version"]
    assert probes and all(r.headers.get("authorization") == f"Bearer {shared_key}"
                          for r in probes)
    answer = sdk(bridge).chat.completions.create(model="gpt-oss:20b", messages=CHAT)
    assert answer.choices[0].message.content  # served by -o, with the same key
    assert shared_key not in bridge.log() and shared_key not in ready.text
