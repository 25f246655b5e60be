"""Fail-over across upstream kinds, end to end: a model served by an Ollama (or Claude's
API) and by an OpenAI-only API in one upstreams file; the first one failing before
its first byte hands the request to the other, translated for it, and the client
gets its answer in its own API's shape. Claude's "overloaded" 529 counts as such a
failure, as every 5xx does."""

from __future__ import annotations

import ollama
import pytest
from crossing_helpers import (
    FLAGS,
    HI,
    KEY_ENV,
    KEYS,
    fake_upstream,
    ollama_client,
    openai_client,
    upstream_table,
)

from bridge.ollama_standin import Fault, StandIn
from bridge.ollama_standin.wire import answer_text
from bridge.serve.processes import start_bridge

REQUESTS = 4  # ties between upstreams take turns: some of them start at the failing one
CHAT_PATH = {"ollama": "/api/chat", "anthropic": "/v1/messages"}


@pytest.fixture(params=["ollama", "anthropic"])
def pair(request, tmp_path):
    """(bridge, first upstream of the param's kind, an OpenAI-only one), both serving
    llama3.2."""
    first = StandIn().start() if request.param == "ollama" else fake_upstream(
        "anthropic", KEYS["anthropic"])
    cloud = fake_upstream("openai", KEYS["openai"])
    try:
        path = tmp_path / "upstreams.toml"
        path.write_text("\n".join([upstream_table("first", first.url, request.param, "llama*"),
                                   upstream_table("cloud", cloud.url, "openai", "llama*")]))
        with start_bridge(*FLAGS, "--upstreams", str(path), upstream=None, workers=1,
                          log_dir=tmp_path, env={KEY_ENV[kind]: KEYS[kind]
                                                 for kind in ("openai", "anthropic")}) as bridge:
            yield request.param, bridge, first, cloud
    finally:
        first.stop()
        cloud.stop()


@pytest.mark.parametrize("status", [503, 529])
def test_a_failing_upstream_hands_the_request_to_one_of_another_kind(pair, status):
    kind, bridge, first, cloud = pair
    first.push_fault(Fault("status", status=status, path=CHAT_PATH[kind]), times=REQUESTS)
    client = ollama_client(bridge)
    for _ in range(REQUESTS):
        assert client.chat(model="llama3.2", messages=HI).message.content == \
            answer_text("hi", 1)
    answer = openai_client(bridge).chat.completions.create(model="llama3.2", messages=HI)
    assert answer.choices[0].message.content == answer_text("hi", 1)
    assert first.count(CHAT_PATH[kind]) >= 1  # some started there, and failed over
    assert cloud.count("/v1/chat/completions") >= REQUESTS - first.count(CHAT_PATH[kind]) + 1
    assert not [request.path for request in cloud.requests if request.path.startswith("/api/")]


def test_when_every_upstream_fails_the_last_ones_error_is_the_answer(pair):
    kind, bridge, first, cloud = pair
    first.push_fault(Fault("status", status=503, path=CHAT_PATH[kind]), times=2)
    cloud.push_fault(Fault("status", status=503, body="cloud down",
                           path="/v1/chat/completions"), times=2)
    with pytest.raises(ollama.ResponseError) as failed:
        ollama_client(bridge).chat(model="llama3.2", messages=HI)
    assert failed.value.status_code == 503
