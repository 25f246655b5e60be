"""The pipeline: failures contained at every stage position and phase, and exchanges
resumed after a given stage (detached, with no client) answering like the client path."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests
from helpers import normalized

from bridge.core import settings as bridge_settings
from bridge.core.exchange import Exchange, encode_json
from bridge.core.pipeline import Pipeline, Stage
from bridge.ollama_standin import StandIn
from bridge.serve.processes import Process, start_bridge

REAL_STAGES = 5  # observability, think, cache, rate_limit, admission with the env below
POSITIONS = range(REAL_STAGES + 1)  # before each real stage, and just before the upstream
PHASES = ("on_request", "on_response", "closer")


@pytest.fixture(scope="module")
def faulty(standin_server: StandIn, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Process]:
    """A bridge with a fault-injecting stage at every position; one upstream slot, so
    a slot that stays held makes the next request wait and fail."""
    env = {"BRIDGE_ENABLE_CACHE": "1",
           "BRIDGE_CACHE_DIR": str(tmp_path_factory.mktemp("faulty-cache")),
           "BRIDGE_RATE_LIMIT": "1000", "BRIDGE_MAX_CONCURRENCY": "1",
           "BRIDGE_MAX_QUEUE_WAIT": "3000", "BRIDGE_TIMEOUT": "60000"}
    with start_bridge(upstream=standin_server.url, via="gunicorn", env=env, workers=2,
                      app="tests.core.faulty_app:app",
                      log_dir=tmp_path_factory.mktemp("faulty")) as process:
        yield process


def chat(stream: bool = False) -> dict:
    # a question of its own: the first request is always a miss that claims the flight
    return {"model": "qwen2.5", "stream": stream,
            "messages": [{"role": "user", "content": f"question {uuid.uuid4().hex}"}]}


def metric(process: Process, name: str) -> float:
    text = requests.get(process.url + "/metrics", timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values)


def assert_served_at_once(process: Process, body: dict, path: str = "/v1/chat/completions"
                          ) -> None:
    """The identical request, without the fault, is answered (a held flight, lease or
    slot would make it wait for the whole timeout; the bound here is far below it)."""
    answer = requests.post(process.url + path, json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert "Echo" in answer.text


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("position", POSITIONS)
def test_a_failing_stage_costs_one_request_only(faulty: Process, position: int,
                                                phase: str) -> None:
    body = chat()
    answer = requests.post(faulty.url + "/v1/chat/completions", json=body, timeout=10,
                           headers={"x-fault": f"{position}:{phase}"})
    if phase == "closer":  # the answer was already on its way: the client sees it whole
        assert answer.status_code == 200 and "Echo" in answer.text
    else:
        assert answer.status_code == 500
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "internal_error"
        assert answer.headers["x-request-id"] in error["message"]
        assert "Traceback" not in answer.text and "InjectedFault" not in answer.text
    assert_served_at_once(faulty, body)


@pytest.mark.parametrize("position", POSITIONS)
def test_a_failing_frame_generator_ends_the_stream_with_an_error(faulty: Process,
                                                                 position: int) -> None:
    body = chat(stream=True)
    with requests.post(faulty.url + "/v1/chat/completions", json=body, timeout=10,
                       headers={"x-fault": f"{position}:frames"}, stream=True) as answer:
        assert answer.status_code == 200
        events = [line[6:] for line in answer.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] != b"[DONE]"
    # the stream says it broke off (inside the cache, a follower of the broken flight
    # learns it as a truncated upstream stream)
    assert json.loads(events[-1])["error"]["message"]
    assert_served_at_once(faulty, body)


def test_the_ollama_surface_answers_a_failure_in_its_own_shape(faulty: Process) -> None:
    body = {**chat(), "stream": False}
    answer = requests.post(faulty.url + "/api/chat", json=body, timeout=10,
                           headers={"x-fault": "2:on_request"})
    assert answer.status_code == 500
    assert isinstance(answer.json()["error"], str)
    assert_served_at_once(faulty, body, "/api/chat")


def test_after_every_failure_nothing_stays_held_and_each_was_logged_once(
        faulty: Process) -> None:
    for position in POSITIONS:
        for phase in (*PHASES, "frames"):
            requests.post(faulty.url + "/v1/chat/completions", json=chat(phase == "frames"),
                          headers={"x-fault": f"{position}:{phase}"}, timeout=10).close()
    # no call is still counted in flight, nobody waits for a slot, and the one slot is
    # free (a last request gets it at once)
    assert metric(faulty, "bridge_upstream_requests_in_flight") == 0
    assert metric(faulty, "bridge_admission_queue_length") == 0
    assert_served_at_once(faulty, chat())
    failures = metric(faulty, "bridge_stage_failures_total")
    assert failures >= len(POSITIONS) * (len(PHASES) + 1)
    log = faulty.log()
    assert log.count("InjectedFault: injected") >= failures  # each with its traceback
    assert "stage faulty-0 failed in on_request [" in log


# --- resuming an exchange after a given stage ----------------------------------------

class ClosingCounter(Stage):
    """Counts how often the exchange's closers run for what it saw."""

    name = "closing-counter"

    def __init__(self) -> None:
        self.closed: dict[str, int] = {}

    def on_request(self, ex: Exchange) -> None:
        self.closed[ex.request_id] = 0
        ex.on_close(self._closed)

    def _closed(self, ex: Exchange) -> None:
        self.closed[ex.request_id] += 1


def exchange(request_id: str, payload: dict) -> Exchange:
    return Exchange(surface="openai", endpoint="chat", method="POST",
                    path="/v1/chat/completions", query="",
                    headers={"content-type": "application/json"},
                    body=encode_json(payload), request_id=request_id, payload=payload)


def stream_events(frames: Iterator) -> list:
    return [normalized(frame.data) if frame.data is not None else frame.raw.decode()
            for frame in frames]


@pytest.mark.parametrize("stream", [True, False])
def test_a_detached_exchange_resumed_after_a_stage_answers_like_the_client_path(
        standin: StandIn, tmp_path: Path, stream: bool) -> None:
    standin.configure(token_delay=0.001)
    settings = bridge_settings.defaults().replace(ollama=standin.url)
    pipeline = Pipeline(settings)
    counter = ClosingCounter()
    pipeline.stages.append(counter)  # innermost: inside the stage it is resumed after
    payload = {"model": "deepseek-r1:7b", "stream": stream, "think": False,
               "messages": [{"role": "user", "content": "resume me"}]}

    by_client = pipeline.handle(exchange("client", payload))
    client_view = (stream_events(by_client.frames) if by_client.streaming
                   else normalized(by_client.json()))

    detached = exchange("detached", payload)
    resumed = pipeline.drain(detached, after=pipeline.stages[0].name)
    assert counter.closed["detached"] == 1  # drain ran the closers, without a client
    detached.close()
    assert counter.closed["detached"] == 1  # and only once
    assert resumed.status == by_client.status == 200
    detached_view = (stream_events(resumed.frames) if resumed.streaming
                     else normalized(resumed.json()))
    assert detached_view == client_view
    assert "</think>" not in json.dumps(detached_view)  # the think stage ran for it too


class Recording(Stage):
    """Notes the order of its start-up calls in `log`; `during` runs inside its `start`."""

    def __init__(self, name: str, log: list[str], during=None):
        self.name, self.log, self.during = name, log, during

    def start(self) -> None:
        self.log.append(f"start {self.name}")
        if self.during is not None:
            self.during()

    def begin_background(self) -> None:
        self.log.append(f"background {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")


def test_start_up_is_one_shot_and_ordered_even_when_a_start_re_enters() -> None:
    log: list[str] = []
    pipeline = Pipeline(bridge_settings.defaults(), features=())
    # a start that calls `start` again (as a job run by a runner started too early did)
    pipeline.stages = [Recording("outer", log, during=lambda: pipeline.start()),
                       Recording("inner", log)]
    pipeline.start()
    pipeline.start()
    assert log == ["start outer", "start inner", "background outer", "background inner"]
    pipeline.stop()
    pipeline.stop()
    assert log[4:] == ["stop outer", "stop inner"]  # outermost first, once


def test_a_stage_that_fails_to_start_gets_no_background_work_and_the_others_do() -> None:
    log: list[str] = []

    def fail() -> None:
        raise RuntimeError("cannot open")

    pipeline = Pipeline(bridge_settings.defaults(), features=())
    pipeline.stages = [Recording("broken", log, during=fail), Recording("fine", log)]
    pipeline.start()
    assert log == ["start broken", "start fine", "background fine"]
