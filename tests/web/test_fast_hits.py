"""Repeated memory hits answered before Flask (`bridge.web.fast_hits`), through a real
gunicorn bridge (2 gevent workers, cache on) in front of the stand-in: every repeat is
the same answer with its own identity, is logged and counted like any hit, and nothing
that must reach the pipeline (a purge, Cache-Control, other credentials, a
body that never arrives) is answered from a kept answer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid

import ollama
import openai
import pytest
import requests
from helpers import (
    http_request,
    metric_total,
    normalized,
    raw_http,
    show_upstream_is_open,
    wait_for,
)

from bridge.serve.processes import ROOT

CHAT = "/v1/chat/completions"
MODEL = "qwen3"
REPEATS = 25


def chat(question: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], **extra}


def question() -> str:
    return f"Why is the sky blue? ({uuid.uuid4().hex[:8]})"


@pytest.fixture(scope="module")
def cached(standin_server, tmp_path_factory):
    from bridge.serve.processes import start_bridge

    cache_dir = tmp_path_factory.mktemp("cache")
    with start_bridge("--enable-cache", "--cache-dir", str(cache_dir), "--cache-hot-threshold",
                      "1", upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        process.cache_dir = cache_dir
        show_upstream_is_open(process)
        yield process


def repeats(bridge, body: dict, count: int = REPEATS, path: str = CHAT, **headers: str
            ) -> list[requests.Response]:
    """`count` identical requests on one keep-alive connection (one worker), after the
    miss that stores the answer; each with its own request id."""
    with requests.Session() as session:
        first = session.post(bridge.url + path, json=body, timeout=30, headers=headers)
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
        answers = [session.post(bridge.url + path, json=body, timeout=30,
                                headers={"x-request-id": f"rep-{i}", **headers})
                   for i in range(count)]
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == f"rep-{i}"
        if "content-length" in answer.headers:  # a stream may come chunked
            assert int(answer.headers["content-length"]) == len(answer.content)
        assert answer.headers["age"].isdigit()
    return answers


def sse_objects(data: bytes) -> list:
    return [json.loads(line[6:]) for line in data.decode().split("\n")
            if line.startswith("data: {")]


def test_whole_answers_repeat_with_their_own_id_and_created(cached):
    body = chat(question())
    answers = repeats(cached, body)
    assert {answer.headers["x-cache"] for answer in answers[2:]} == {"HIT-MEMORY"}
    parsed = [answer.json() for answer in answers]
    assert all(normalized(one) == normalized(parsed[0]) for one in parsed)
    ids = {one["id"] for one in parsed}
    assert len(ids) == REPEATS and all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", i) for i in ids)
    assert all(abs(one["created"] - time.time()) < 30 for one in parsed)
    assert parsed[0]["choices"][0]["message"]["content"]


def test_streamed_answers_repeat_alike_for_the_openai_client(cached):
    q = question()
    answers = repeats(cached, chat(q, stream=True))  # one connection: the worker that stored
    assert {answer.headers["x-cache"] for answer in answers} == {"HIT-MEMORY"}
    streams = [sse_objects(answer.content) for answer in answers]
    assert all(normalized(one) == normalized(streams[0]) for one in streams)
    assert len({frame["id"] for one in streams for frame in one}) == REPEATS
    assert all(answer.content.endswith(b"data: [DONE]\n\n") for answer in answers)
    with openai.OpenAI(base_url=cached.url + "/v1", api_key="sk-test", max_retries=0) as oai:
        runs = []
        for _ in range(REPEATS):
            raw = oai.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": q}], stream=True)
            runs.append((raw.headers["x-cache"], list(raw.parse())))
    assert all(status.startswith("HIT-") for status, _ in runs)
    texts = {"".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
             for _, chunks in runs}
    assert len(texts) == 1 and texts.pop()
    # every chunk of one answer has that answer's id; each answer its own
    ids = [{chunk.id for chunk in chunks} for _, chunks in runs]
    assert all(len(one) == 1 for one in ids) and len(set().union(*ids)) == REPEATS
    assert all(normalized(chunks) == normalized(runs[0][1]) for _, chunks in runs)


def test_ollama_answers_repeat_with_a_fresh_created_at(cached):
    q = question()
    streamed = chat(q)  # /api/chat streams by default
    answers = repeats(cached, streamed, path="/api/chat", count=5)
    frames = [[json.loads(line) for line in answer.text.splitlines()] for answer in answers]
    assert all(normalized(one) == normalized(frames[0]) for one in frames)
    assert frames[-1][-1]["done"] is True
    client = ollama.Client(host=cached.url)
    later = [client.generate(model=MODEL, prompt=q, stream=False) for _ in range(2 + REPEATS)]
    assert len({answer.response for answer in later}) == 1
    stamps = [answer.created_at for answer in later[2:]]
    assert len(set(stamps)) == len(stamps)  # each repeat is stamped when it is answered


def test_every_repeat_is_logged_and_counted(cached):
    body = chat(question())
    with requests.Session() as session:
        first = session.post(cached.url + CHAT, json=body, timeout=30)
        completion = first.json()["usage"]["completion_tokens"]
        hits = lambda: metric_total(cached.url, "bridge_cache_hits_total")  # noqa: E731
        before = {
            "hits": hits(),
            "requests": metric_total(cached.url, "bridge_requests_total", route=CHAT),
            "tokens": metric_total(cached.url, "bridge_completion_tokens_total",
                                   source="cache"),
            "model": metric_total(cached.url, "bridge_model_requests_total", model=MODEL),
            "saved": metric_total(cached.url, "bridge_cache_tokens_saved_total"),
        }
        tag = uuid.uuid4().hex[:8]
        for i in range(REPEATS):
            answer = session.post(cached.url + CHAT, json=body, timeout=30,
                                  headers={"x-request-id": f"{tag}-{i}"})
            assert answer.headers["x-cache"].startswith("HIT-")
    wait_for(lambda: hits() == before["hits"] + REPEATS, what="every hit counted")
    assert metric_total(cached.url, "bridge_requests_total", route=CHAT) == \
        before["requests"] + REPEATS
    assert metric_total(cached.url, "bridge_completion_tokens_total", source="cache") == \
        before["tokens"] + REPEATS * completion
    assert metric_total(cached.url, "bridge_model_requests_total", model=MODEL) == \
        before["model"] + REPEATS
    assert metric_total(cached.url, "bridge_cache_tokens_saved_total") == \
        before["saved"] + REPEATS * completion
    lines = wait_for(lambda: [line for line in cached.log().splitlines()
                              if f"id={tag}-" in line and "cache=HIT-" in line]
                     if cached.log().count(f"id={tag}-") >= REPEATS else None,
                     what="an access line per repeat")
    assert len(lines) == REPEATS
    assert all(f'"POST {CHAT}" 200' in line for line in lines)


def test_a_purge_reaches_the_repeats_at_once(cached):
    body = chat(question())
    repeats(cached, body, count=5)
    purged = subprocess.run([sys.executable, "-m", "bridge", "cache", "purge", "--cache-dir",
                             str(cached.cache_dir)], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert purged.returncode == 0, purged.stderr
    with requests.Session() as session:  # the worker that kept the answer
        wait_for(lambda: session.post(cached.url + CHAT, json=body, timeout=30)
                 .headers["x-cache"] == "MISS", timeout=5, what="a miss after the purge")


def test_requests_that_need_the_pipeline_still_get_it(standin, cached):
    body = chat(question())
    repeats(cached, body, count=5)
    calls = standin.count(CHAT)
    with requests.Session() as session:
        refreshed = session.post(cached.url + CHAT, json=body, timeout=30,
                                 headers={"Cache-Control": "no-cache"})
        assert refreshed.headers["x-cache"] == "MISS" and standin.count(CHAT) == calls + 1
        bypassed = session.post(cached.url + CHAT, json=body, timeout=30,
                                headers={"Cache-Control": "no-store"})
        assert bypassed.headers["x-cache"] == "BYPASS"


def test_other_credentials_never_get_a_kept_answer(standin, make_bridge, tmp_path):
    standin.configure(api_key="sk-good")
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path))
    body = chat(question())
    answers = repeats(bridge, body, count=5, Authorization="Bearer sk-good")
    assert answers[-1].headers["x-cache"] == "HIT-MEMORY"
    for headers in ({"Authorization": "Bearer sk-wrong"}, {}, {"X-Api-Key": "sk-good"}):
        refused = requests.post(bridge.url + CHAT, json=body, timeout=30, headers=headers)
        assert refused.status_code == 401 and refused.headers["x-cache"] == "MISS"


def test_a_body_that_never_arrives_is_refused_in_the_surface_shape(standin, make_bridge,
                                                                  tmp_path):
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path),
                         "--body-read-timeout", "500")
    body = json.dumps(chat(question())).encode()
    request = http_request(CHAT, body)
    status, answer = raw_http(bridge.url, request[:-10], timeout=10)  # 10 bytes short
    assert status == 408
    error = json.loads(answer)["error"]
    assert "--body-read-timeout" in error["message"] and error["type"]
    assert requests.post(bridge.url + CHAT, data=body, timeout=30).status_code == 200
