"""The cache and the usage counters across upstream kinds, end to end: a translated
answer is stored as the client's wire says it, so a repeat is a hit with no upstream
call, whole or streamed, and the key does not depend on the kind of the upstream that
answered (an Ollama first, an OpenAI-only one after a restart on the same cache dir);
the tokens an upstream of another kind reported are counted as the client got them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests
from crossing_helpers import (
    VERSION,
    Leg,
    anthropic_client,
    crossing,
    fake_upstream,
    openai_client,
    sse_data,
)
from helpers import metric_total, wait_for

from bridge.ollama_standin import StandIn
from bridge.ollama_standin.wire import answer_text
from bridge.serve.processes import start_bridge


def question() -> str:
    return f"Why is the sky blue? ({uuid.uuid4().hex[:8]})"  # never asked before: a miss


def cache_flags(directory: Path) -> tuple[str, ...]:
    return ("--enable-cache", "--cache-dir", str(directory / "cache"))


@pytest.fixture(scope="module", params=["openai", "anthropic"])
def cached(request, tmp_path_factory) -> Iterator[Leg]:
    """A caching bridge in front of a fake upstream of each kind (-o)."""
    directory = tmp_path_factory.mktemp(f"cached-{request.param}")
    with crossing(request.param, "o", directory, *cache_flags(directory)) as leg:
        yield leg


@pytest.fixture
def leg(cached: Leg) -> Leg:
    cached.upstream.reset()
    return cached


def test_a_repeated_native_chat_is_a_hit_without_an_upstream_call(leg):
    body = {"model": "llama3.2", "stream": False,
            "messages": [{"role": "user", "content": question()}]}
    first = requests.post(leg.url + "/api/chat", json=body, timeout=60)
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    calls = len(leg.model_calls())
    assert calls == 1
    again = requests.post(leg.url + "/api/chat", json=body, timeout=60)
    assert again.headers["x-cache"].startswith("HIT")
    assert again.json()["message"] == first.json()["message"]
    streamed = requests.post(leg.url + "/api/chat", json={**body, "stream": True}, timeout=60)
    assert streamed.headers["x-cache"].startswith("HIT")
    assert len(leg.model_calls()) == calls


def test_a_repeated_openai_chat_is_a_hit_without_an_upstream_call(leg):
    messages = [{"role": "user", "content": question()}]
    client = openai_client(leg)
    first = client.chat.completions.with_raw_response.create(model="llama3.2",
                                                             messages=messages)
    assert first.headers["x-cache"] == "MISS"
    again = client.chat.completions.with_raw_response.create(model="llama3.2",
                                                             messages=messages)
    assert again.headers["x-cache"].startswith("HIT")
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert len(leg.model_calls()) == 1


def test_a_repeated_message_is_a_hit_without_an_upstream_call(leg):
    q = question()
    client = anthropic_client(leg)
    first = client.messages.with_raw_response.create(
        model="llama3.2", max_tokens=64, messages=[{"role": "user", "content": q}])
    assert first.headers["x-cache"] == "MISS"
    streamed = requests.post(leg.url + "/v1/messages", headers=VERSION, timeout=60, json={
        "model": "llama3.2", "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": q}]})
    assert streamed.headers["x-cache"].startswith("HIT")
    text = "".join(event["delta"]["text"] for event in sse_data(streamed.text)
                   if event["type"] == "content_block_delta")
    assert text == first.parse().content[0].text == answer_text(q, 1)
    assert len(leg.model_calls()) == 1


def test_tokens_an_upstream_of_another_kind_reported_are_counted(leg):
    """Counted per model: a model no other test of this module's bridge asks for, so a
    stream of an earlier test still being closed cannot add to what is read."""
    def counted(name: str, **labels: str) -> float:
        return metric_total(leg.url, name, **labels)

    model = "qwen2.5"
    before = (counted("bridge_prompt_tokens_total", source="upstream"),
              counted("bridge_completion_tokens_total", source="upstream"))
    answer = openai_client(leg).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question()}])
    streamed = list(openai_client(leg).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question()}], stream=True,
        stream_options={"include_usage": True}))
    usage = [answer.usage, streamed[-1].usage]
    prompt = sum(u.prompt_tokens for u in usage)
    completion = sum(u.completion_tokens for u in usage)
    assert prompt > 0 and completion > 0
    wait_for(lambda: counted("bridge_model_tokens_total", model=model) >= prompt + completion,
             what="the tokens to be counted")
    assert counted("bridge_model_tokens_total", model=model) == prompt + completion
    assert counted("bridge_prompt_tokens_total", source="upstream") >= before[0] + prompt
    assert counted("bridge_completion_tokens_total", source="upstream") >= before[1] + completion


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_the_key_of_an_answer_does_not_depend_on_the_upstreams_kind(kind, tmp_path):
    """Asked of an Ollama first; after a restart on the same cache dir with an upstream of
    another kind at the same URL (the Ollama replaced by a cloud API behind it), the same
    request is a hit there, with no model call."""
    body = {"model": "llama3.2", "stream": False,
            "messages": [{"role": "user", "content": question()}]}
    with StandIn() as ollama_box:
        with start_bridge(*cache_flags(tmp_path), upstream=ollama_box.url, workers=2,
                          log_dir=tmp_path) as bridge:
            first = requests.post(bridge.url + "/api/chat", json=body, timeout=60)
            assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    other = fake_upstream(kind, port=ollama_box.port)
    try:
        with crossing(kind, "o", tmp_path, *cache_flags(tmp_path), upstream=other) as leg:
            again = requests.post(leg.url + "/api/chat", json=body, timeout=60)
            assert again.status_code == 200 and again.headers["x-cache"].startswith("HIT")
            assert again.json()["message"] == first.json()["message"]
            assert leg.model_calls() == []
    finally:
        other.stop()
