"""Load and unload requests are model control, not questions (issue 24, item 8): they
always reach the upstream and are never stored; `keep_alive` never changes a question.
Through gunicorn (one worker, so that a hit could only come from its memory) in front of
the stand-in, with the `ollama` and `openai` clients and `requests` for the headers."""

from __future__ import annotations

import uuid

import ollama
import openai
import pytest
import requests
from helpers import show_upstream_is_open

from bridge.serve.processes import start_bridge

MODEL = "qwen3"


@pytest.fixture(scope="module")
def cached(standin_server, tmp_path_factory):
    with start_bridge("--enable-cache", "--cache-dir", str(tmp_path_factory.mktemp("cache")),
                      upstream=standin_server.url, workers=1,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        show_upstream_is_open(process)
        yield process


def post(bridge, path: str, body: dict) -> requests.Response:
    return requests.post(bridge.url + path, json=body, timeout=30)


@pytest.mark.parametrize("stream", [False, True, None])
@pytest.mark.parametrize("path, idle", [
    ("/api/chat", {"messages": []}), ("/api/chat", {}),
    ("/api/generate", {"prompt": ""}), ("/api/generate", {}),
])
def test_load_and_unload_always_reach_ollama(cached, standin, path, idle, stream):
    body = {"model": MODEL, **idle}
    if stream is not None:
        body["stream"] = stream
    answers = [post(cached, path, body), post(cached, path, body),
               post(cached, path, {**body, "keep_alive": 0})]
    assert [answer.json()["done_reason"] for answer in answers] == ["load", "load", "unload"]
    assert [answer.headers["x-cache"] for answer in answers] == ["BYPASS"] * 3
    assert standin.count(path) == 3
    # nothing was stored: the same again still goes upstream
    assert post(cached, path, body).headers["x-cache"] == "BYPASS"
    assert standin.count(path) == 4


def test_load_and_unload_with_the_ollama_client(cached, standin):
    client = ollama.Client(host=cached.url)
    try:
        assert client.generate(model=MODEL).done_reason == "load"
        assert client.generate(model=MODEL, keep_alive=0).done_reason == "unload"
        assert client.chat(model=MODEL, messages=[]).done_reason == "load"
        assert client.chat(model=MODEL, messages=[], keep_alive=0).done_reason == "unload"
    finally:
        client.close()
    assert standin.count("/api/generate") == standin.count("/api/chat") == 2


@pytest.mark.parametrize("path, idle", [("/v1/chat/completions", {"messages": []}),
                                        ("/v1/completions", {"prompt": ""})])
@pytest.mark.parametrize("stream", [False, True])
def test_v1_without_a_question_is_never_cached(cached, standin, path, idle, stream):
    body = {"model": MODEL, "stream": stream, **idle}
    answers = [post(cached, path, body) for _ in range(2)]
    assert [answer.headers["x-cache"] for answer in answers] == ["BYPASS"] * 2
    assert standin.count(path) == 2


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path, question", [
    ("/api/chat", {"messages": [{"role": "user", "content": "?"}]}),
    ("/api/generate", {"prompt": "?"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "?"}]}),
    ("/v1/completions", {"prompt": "?"}),
])
def test_keep_alive_never_changes_a_question(cached, standin, path, question, stream):
    unique = uuid.uuid4().hex[:8]
    question = {name: [{**m, "content": unique} for m in value] if name == "messages"
                else unique for name, value in question.items()}
    body = {"model": MODEL, "stream": stream, **question}
    first = post(cached, path, body)
    assert first.headers["x-cache"] == "MISS"
    for keep_alive in ("5m", 0, -1):
        again = post(cached, path, {**body, "keep_alive": keep_alive})
        assert again.headers["x-cache"] == "HIT-MEMORY"
        assert again.status_code == 200
    assert standin.count(path) == 1


def test_keep_alive_with_the_openai_client(cached, standin):
    unique = uuid.uuid4().hex[:8]
    with openai.OpenAI(base_url=cached.url + "/v1", api_key="sk-test", max_retries=0) as client:
        answers = [client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": unique}], **extra)
            for extra in ({}, {"extra_body": {"keep_alive": "10m"}})]
    assert [answer.headers["x-cache"] for answer in answers] == ["MISS", "HIT-MEMORY"]
    assert answers[0].parse().choices[0].message.content == \
        answers[1].parse().choices[0].message.content
