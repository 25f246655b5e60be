"""Streams that end before their first byte still end their upstream call: with
`--upstreams`, the routing in-flight count (what the balancer weighs, exposed as
`bridge_routing_in_flight`) goes back to 0 after streams that a stage's failure replaced
unread, streams whose client left at once, and streams read to their end; through a real
gunicorn bridge (with a fault-injecting stage at every position) and two stand-ins."""

from __future__ import annotations

import socket
import uuid
from typing import Iterator

import pytest
import requests
from helpers import http_request, metric_total, wait_for

from bridge.core.exchange import encode_json
from bridge.ollama_standin import StandIn
from bridge.serve.processes import Process, start_bridge

# Positions of the fault-injecting stages (tests/core/faulty_app.py) in this bridge's
# pipeline: observability, routing, think, cache, rate limit, admission, each after one.
INSIDE_ROUTING = 2   # its failure replaces whatever the stages inside produced
AT_THE_UPSTREAM = 6  # its failure replaces the upstream's own stream


@pytest.fixture(scope="module")
def boxes() -> Iterator[list[StandIn]]:
    made = [StandIn().start(), StandIn().start()]
    yield made
    for box in made:
        box.stop()


@pytest.fixture(scope="module")
def bridge(boxes: list[StandIn], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Process]:
    file = tmp_path_factory.mktemp("upstreams") / "upstreams.toml"
    file.write_text("".join(f'[[upstream]]\nname = "{name}"\nurl = "{box.url}"\n'
                            'models = ["qwen*"]\n\n'
                            for name, box in zip("ab", boxes, strict=True)))
    env = {"BRIDGE_UPSTREAMS": str(file), "BRIDGE_ENABLE_CACHE": "1",
           "BRIDGE_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    with start_bridge(upstream=None, via="gunicorn", env=env, workers=2,
                      app="tests.core.faulty_app:app",
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


def chat() -> dict:
    return {"model": "qwen2.5", "stream": True,
            "messages": [{"role": "user", "content": f"question {uuid.uuid4().hex}"}]}


def in_flight(bridge: Process) -> float:
    return metric_total(bridge.url, "bridge_routing_in_flight")


@pytest.mark.parametrize("cache_control", ["", "no-store"])  # through a flight, or not
@pytest.mark.parametrize("position", [INSIDE_ROUTING, AT_THE_UPSTREAM])
def test_a_stream_a_failure_replaced_unread_ends_its_upstream_call(
        bridge: Process, position: int, cache_control: str) -> None:
    for path in ("/v1/chat/completions", "/api/chat"):
        answer = requests.post(bridge.url + path, json=chat(), timeout=30, headers={
            "x-fault": f"{position}:on_response", "cache-control": cache_control})
        assert answer.status_code == 500
    wait_for(lambda: in_flight(bridge) == 0, 30, "the routing in-flight count back to 0")


def test_streams_whose_clients_leave_at_once_end_their_upstream_calls(
        bridge: Process, boxes: list[StandIn]) -> None:
    def calls() -> int:
        return sum(box.count("/v1/chat/completions") for box in boxes)

    before = calls()
    for _ in range(6):
        body = encode_json(chat())
        host, port = bridge.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), 10)
        sock.sendall(http_request("/v1/chat/completions", body,
                                  "X-Standin-Token-Delay: 0.05", "Cache-Control: no-store"))
        sock.close()  # before the first byte of the answer
    wait_for(lambda: calls() == before + 6, 30, "the six calls upstream")
    wait_for(lambda: in_flight(bridge) == 0, 30, "the routing in-flight count back to 0")


def test_streams_read_to_their_end_leave_nothing_in_flight(bridge: Process) -> None:
    for _ in range(4):
        with requests.post(bridge.url + "/api/chat", json=chat(), stream=True,
                           timeout=30) as answer:
            assert answer.status_code == 200 and b'"done":true' in answer.content
    wait_for(lambda: in_flight(bridge) == 0, 30, "the routing in-flight count back to 0")
    # both upstreams were counted (the gauge has a sample for each)
    text = requests.get(bridge.url + "/metrics", timeout=10).text
    assert 'bridge_routing_in_flight{upstream="a"}' in text
    assert 'bridge_routing_in_flight{upstream="b"}' in text
