"""The response cache through a real gunicorn (2 gevent workers) in front of the stand-in:
what clients see on misses and hits, streamed and whole, on both API surfaces, and how
often the upstream is called."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import ollama
import openai
import pytest
import requests
from helpers import show_upstream_is_open

from bridge.ollama_standin import Fault
from bridge.serve.processes import start_bridge

MODEL = "qwen3"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def cached(standin_server, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    with start_bridge("--enable-cache", "--cache-dir", str(cache_dir), "--keep-reasoning",
                      upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        show_upstream_is_open(process)
        yield process


@pytest.fixture
def oai(cached):
    with openai.OpenAI(base_url=cached.url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client  # closed: an idle keep-alive connection would delay the bridge's stop


def question() -> str:
    return f"Why is the sky blue? ({uuid.uuid4().hex[:8]})"


def messages(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def post(bridge, body, path=CHAT, headers=None, **kwargs) -> requests.Response:
    return requests.post(bridge.url + path, json=body, headers=headers, timeout=30, **kwargs)


def reasoning_of(holder) -> str:
    """The reasoning the think filter hands over (`--keep-reasoning`)."""
    return (holder.model_extra or {}).get("reasoning_content") or ""


def streamed(oai, q, **kwargs):
    """(x-cache, chunks) of a streamed chat completion read by the openai SDK."""
    raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=messages(q),
                                                        stream=True, **kwargs)
    return raw.headers["x-cache"], list(raw.parse())


def whole(oai, q, **kwargs):
    raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=messages(q),
                                                        **kwargs)
    return raw.headers, raw.parse()


def text_of(chunks) -> tuple[str, str]:
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    return ("".join(delta.content or "" for delta in deltas),
            "".join(reasoning_of(delta) for delta in deltas))


def test_whole_answer_miss_then_hit(standin, oai):
    q = question()
    first_headers, first = whole(oai, q)
    second_headers, second = whole(oai, q)
    assert first_headers["x-cache"] == "MISS" and "age" not in first_headers
    assert second_headers["x-cache"] in ("HIT-MEMORY", "HIT-DISK")
    assert int(second_headers["age"]) >= 0
    assert second.choices[0].message.content == first.choices[0].message.content == f"Echo: {q}"
    assert reasoning_of(second.choices[0].message) == reasoning_of(first.choices[0].message) != ""
    assert second.usage == first.usage and second.usage.total_tokens > 0
    assert second.id != first.id and second.id.startswith("chatcmpl-")
    assert standin.count(CHAT) == 1


def test_stream_miss_then_stream_hit_and_whole_hit(standin, oai):
    q = question()
    miss_status, miss = streamed(oai, q)
    hit_status, hit = streamed(oai, q)
    assert (miss_status, hit_status[:4]) == ("MISS", "HIT-")
    assert len(hit) == len(miss) > 5  # the original chunk boundaries, not one big chunk
    assert text_of(hit) == text_of(miss) == (f"Echo: {q}", text_of(miss)[1])
    assert text_of(hit)[1].startswith("Okay")  # reasoning survives the streamed hit
    assert len({chunk.id for chunk in hit}) == 1 and hit[0].id != miss[0].id
    assert all(chunk.usage is None for chunk in hit + miss)  # not asked for: not sent
    _, with_usage = streamed(oai, q, stream_options={"include_usage": True})
    assert with_usage[-1].choices == [] and with_usage[-1].usage.total_tokens > 0
    headers, body = whole(oai, q)
    assert headers["x-cache"].startswith("HIT-")
    assert body.choices[0].message.content == f"Echo: {q}"
    assert reasoning_of(body.choices[0].message) == text_of(miss)[1]
    assert body.usage == with_usage[-1].usage and body.choices[0].finish_reason == "stop"
    assert standin.count(CHAT) == 1


def test_whole_miss_then_streamed_hit(standin, oai, cached):
    q = question()
    headers, body = whole(oai, q)
    status, chunks = streamed(oai, q)
    assert (headers["x-cache"], status[:4]) == ("MISS", "HIT-")
    assert len(chunks) > 5 and text_of(chunks)[0] == body.choices[0].message.content
    raw = post(cached, {"model": MODEL, "messages": messages(q), "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n")
    assert standin.count(CHAT) == 1


def test_ollama_client_cannot_tell_hits_from_misses(standin, cached):
    client = ollama.Client(host=cached.url, headers={"Connection": "close"})
    q = question()
    first = client.chat(model=MODEL, messages=messages(q), stream=False)
    parts = list(client.chat(model=MODEL, messages=messages(q), stream=True))
    again = client.chat(model=MODEL, messages=messages(q), stream=False)
    assert len(parts) > 5 and parts[-1].done and parts[-1].done_reason == "stop"
    assert "".join(part.message.content for part in parts) == first.message.content
    assert "".join(part.message.thinking or "" for part in parts) == first.message.thinking
    assert again.message == first.message and again.eval_count == first.eval_count
    generated = client.generate(model=MODEL, prompt=q, stream=False)
    pieces = list(client.generate(model=MODEL, prompt=q, stream=True))
    assert "".join(piece.response for piece in pieces) == generated.response
    assert client.embed(model="all-minilm", input=q).embeddings == \
        client.embed(model="all-minilm", input=q).embeddings
    assert (standin.count("/api/chat"), standin.count("/api/generate"),
            standin.count("/api/embed")) == (1, 1, 1)


def test_embeddings_are_cached(standin, oai):
    q = question()
    first = oai.embeddings.with_raw_response.create(model="all-minilm", input=q)
    second = oai.embeddings.with_raw_response.create(model="all-minilm", input=q)
    assert second.headers["x-cache"].startswith("HIT-")
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    assert standin.count("/v1/embeddings") == 1


def test_other_worker_answers_from_disk(standin, cached):
    body = {"model": MODEL, "messages": messages(question())}
    closing = {"Connection": "close"}  # each request on a new connection: either worker
    assert post(cached, body, headers=closing).headers["x-cache"] == "MISS"
    # until the other worker took one (a loaded machine may give one worker a long run
    # of connections: bounded by count, not by time)
    seen: list[str] = []
    while "HIT-DISK" not in seen and len(seen) < 400:
        seen.append(post(cached, body, headers=closing).headers["x-cache"])
    assert "HIT-DISK" in seen and set(seen) <= {"HIT-MEMORY", "HIT-DISK"}
    assert standin.count(CHAT) == 1


def test_the_key_is_the_conversation_not_the_bytes(standin, cached):
    q = question()
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": "<think>\nThe user greets.\n</think>\n\nHello!"},
               {"role": "user", "content": q}]
    body = {"model": MODEL, "messages": history, "temperature": 0.5}
    assert post(cached, body).headers["x-cache"] == "MISS"
    same = json.dumps({"temperature": 0.5, "user": "alice", "stream": False,
                       "stream_options": None, "model": MODEL,
                       "messages": [history[0], {"role": "assistant", "content": "Hello!",
                                                 "reasoning_content": "The user greets."},
                                    history[2]]}, indent=3).encode()
    hit = requests.post(cached.url + CHAT, data=same, timeout=30,
                        headers={"content-type": "application/json"})
    assert hit.headers["x-cache"].startswith("HIT-")
    assert post(cached, {**body, "temperature": 0.7}).headers["x-cache"] == "MISS"
    assert post(cached, {**body, "messages": history[1:]}).headers["x-cache"] == "MISS"
    assert standin.count(CHAT) == 3


def test_cache_control(standin, cached):
    body = {"model": MODEL, "messages": messages(question())}
    no_store = {"Cache-Control": "no-store"}
    assert [post(cached, body, headers=no_store).headers["x-cache"] for _ in range(2)] == \
        ["BYPASS", "BYPASS"]
    assert post(cached, body).headers["x-cache"] == "MISS"  # no-store stored nothing
    refreshed = post(cached, body, headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "MISS" and refreshed.status_code == 200
    assert standin.count(CHAT) == 4
    fresh_enough = post(cached, body, headers={"Cache-Control": "max-age=3600"})
    assert fresh_enough.headers["x-cache"].startswith("HIT-")
    too_old = post(cached, body, headers={"Cache-Control": "max-age=0"})
    assert too_old.headers["x-cache"] == "MISS"
    assert standin.count(CHAT) == 5


def test_single_flight(standin, cached):
    standin.configure(first_token_delay=0.5, token_delay=0.01)
    q = question()

    def ask(i: int):
        time.sleep(0.03 * i)  # staggered, so that both workers accept some (all in flight)
        stream = i % 2 == 0
        response = post(cached, {"model": MODEL, "messages": messages(q), "stream": stream},
                        headers={"Connection": "close"})
        if not stream:
            return response.headers["x-cache"], response.json()["choices"][0]["message"]["content"]
        events = [json.loads(line[6:]) for line in response.text.split("\n\n")
                  if line.startswith("data: {")]
        return response.headers["x-cache"], "".join(
            event["choices"][0]["delta"].get("content") or "" for event in events)

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(ask, range(10)))
    assert {text for _, text in answers} == {f"Echo: {q}"}
    assert standin.count(CHAT) == 1


def test_cut_stream_is_not_cached(standin, cached):
    body = {"model": MODEL, "messages": messages(question()), "stream": True}
    standin.push_fault(Fault("cut", after_chunks=3))
    cut = post(cached, body)
    assert "[DONE]" not in cut.text and '"error"' in cut.text
    assert post(cached, body).headers["x-cache"] == "MISS"
    standin.push_fault(Fault("cut", after_chunks=3))
    whole_cut = post(cached, {**body, "stream": False, "messages": messages(question())})
    assert whole_cut.status_code == 502
    assert whole_cut.json()["error"]["code"] == "upstream_stream_truncated"
    assert standin.count(CHAT) == 3


def test_errors_are_not_cached(standin, cached):
    body = {"model": MODEL, "messages": messages(question())}
    standin.push_fault(Fault("status", status=500))
    assert post(cached, body).status_code == 500
    second = post(cached, body)
    assert second.status_code == 200 and second.headers["x-cache"] == "MISS"
    unknown = {"model": "no-such-model", "messages": messages(question())}
    assert [post(cached, unknown).status_code for _ in range(2)] == [404, 404]
    assert standin.count(CHAT) == 4


def test_streamed_follower_gets_the_stream_as_it_is_produced(standin, make_bridge, tmp_path):
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path), workers=1)
    show_upstream_is_open(bridge)
    standin.configure(token_delay=0.04)
    body = {"model": MODEL, "messages": messages(question()), "stream": True}
    follower: dict = {}

    def follow() -> None:
        with post(bridge, body, stream=True) as response:
            follower["status"] = response.headers["x-cache"]
            lines = response.iter_lines()
            follower["first"] = next(line for line in lines if line)
            follower["first_at"] = time.monotonic()
            follower["rest"] = [line for line in lines if line]

    with post(bridge, body, stream=True) as leader:
        chunks = filter(None, leader.iter_lines())
        lines = list(itertools.islice(chunks, 6))
        thread = threading.Thread(target=follow)
        thread.start()
        lines += list(chunks)
        leader_done_at = time.monotonic()
    thread.join(30)
    assert follower["status"] == "HIT-FLIGHT" and follower["first_at"] < leader_done_at
    assert len(follower["rest"]) + 1 == len(lines) and lines[-1] == b"data: [DONE]"
    assert standin.count(CHAT) == 2  # the first request, and one for leader and follower


def test_keys_of_repeated_bodies_are_remembered_per_scope_and_bounded(tmp_path):
    from bridge.cache import stage as cache_stage
    from bridge.cache.keys import cache_key
    from bridge.core import settings as bridge_settings
    from bridge.core.exchange import Exchange
    from bridge.core.pipeline import Context

    settings = bridge_settings.load(["--enable-cache", "--cache-dir", str(tmp_path)], environ={})
    stage = cache_stage.CacheStage(settings, Context(settings))

    def key(payload: dict, scope: str | None = None) -> str:
        ex = Exchange(surface="openai", endpoint="chat", method="POST", path="/v1/chat/completions",
                      query="", headers={}, body=json.dumps(payload).encode(), request_id="r",
                      payload=payload)
        if scope is not None:
            ex.cache_scope = scope
        return stage._key(ex)

    question = {"model": "m", "messages": [{"role": "user", "content": "Q"}]}
    for _ in range(2):
        upstream = stage.settings.ollama
        assert key(question) == cache_key("openai", "chat", question, upstream=upstream)
        assert key(question, "team-a") == cache_key("openai", "chat", question, "team-a",
                                                    upstream)
    assert key(question, "team-a") != key(question)
    for n in range(cache_stage.KEY_MEMO_ENTRIES + 10):
        key({"model": "m", "prompt": str(n)})
    assert len(stage._keys) == cache_stage.KEY_MEMO_ENTRIES
