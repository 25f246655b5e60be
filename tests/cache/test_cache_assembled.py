"""A whole answer built from a stored stream is the one the upstream sends whole, field for
field, and a stream cut from a stored whole answer is the one it streams (issue 24, item
9): tool calls (their `index` included), log probabilities and reasoning, on every
surface. Against what the stand-in sends directly; through gunicorn with the think filter
off (so that nothing but the cache stands between), with the `openai` and `ollama`
clients reading what they can."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import ollama
import openai
import pytest
import requests
from helpers import normalized, show_upstream_is_open

from bridge.cache import replay
from bridge.cache.entry import Entry, decode_entry, encode_entry
from bridge.serve.processes import start_bridge

MODEL = "qwen3"  # reasons in a field, and can call tools
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
V1_LOGPROBS = {"logprobs": True, "top_logprobs": 2}
NATIVE_LOGPROBS = {"logprobs": True, "top_logprobs": 2}


def requests_of(question: str) -> dict[str, dict[str, Any]]:
    """path -> a request asking for everything that path can carry."""
    user = [{"role": "user", "content": question}]
    return {
        "/v1/chat/completions": {"model": MODEL, "messages": user, "tools": TOOLS,
                                 **V1_LOGPROBS},
        "/v1/chat/completions#text": {"model": MODEL, "messages": user, **V1_LOGPROBS},
        "/v1/completions": {"model": MODEL, "prompt": question},
        "/api/chat": {"model": MODEL, "messages": user, "tools": TOOLS, **NATIVE_LOGPROBS},
        "/api/chat#text": {"model": MODEL, "messages": user, **NATIVE_LOGPROBS},
        "/api/generate": {"model": MODEL, "prompt": question, **NATIVE_LOGPROBS},
    }


PATHS = list(requests_of(""))


@pytest.fixture(scope="module")
def cached(standin_server, tmp_path_factory):
    with start_bridge("--enable-cache", "--cache-dir", str(tmp_path_factory.mktemp("cache")),
                      "--disable-think-filter", upstream=standin_server.url, workers=1,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        show_upstream_is_open(process)
        yield process


def call(base: str, path: str, body: dict, stream: bool) -> tuple[str | None, Any]:
    """(X-Cache, the answer: a whole body, or the list of a stream's objects)."""
    response = requests.post(base + path.partition("#")[0], json={**body, "stream": stream},
                             timeout=30)
    assert response.status_code == 200, response.text
    if not stream:
        return response.headers.get("x-cache"), response.json()
    if path.startswith("/api/"):
        return response.headers.get("x-cache"), [json.loads(line)
                                                 for line in response.text.splitlines()]
    return response.headers.get("x-cache"), [
        json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
        for line in response.text.split("\n\n") if line.startswith("data: ")]


def direct(standin, path: str, body: dict, stream: bool) -> Any:
    return normalized(call(standin.url, path, body, stream)[1])


def shows_everything(path: str, whole: dict) -> None:
    """The stand-in's answer carries what the test is about (else it proves nothing)."""
    if path == "/v1/chat/completions":
        choice = whole["choices"][0]
        assert choice["message"]["tool_calls"][0]["index"] == 0 and choice["logprobs"]
        assert choice["message"]["reasoning"]
    elif path == "/api/chat":
        assert whole["message"]["tool_calls"] and whole["logprobs"]
        assert whole["message"]["thinking"]
    elif path == "/api/generate":
        assert whole["thinking"] and whole["logprobs"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("first", ["stream", "whole"])
def test_a_cross_hit_is_what_the_upstream_sends(cached, standin, path, first):
    body = requests_of(f"Weather in Paris? ({uuid.uuid4().hex[:8]})")[path]
    expected = {stream: direct(standin, path, body, stream) for stream in (False, True)}
    shows_everything(path, expected[False])
    order = (True, False) if first == "stream" else (False, True)
    for status, stream in zip(("MISS", "HIT-MEMORY"), order, strict=True):
        x_cache, answer = call(cached.url, path, body, stream)
        assert x_cache == status
        assert normalized(answer) == expected[stream], (status, "stream" if stream else "whole")
    assert standin.count(path.partition("#")[0]) == 3  # two direct, one through the cache


def test_the_clients_read_the_assembled_tool_calls(cached, standin):
    question = f"Weather in Paris? ({uuid.uuid4().hex[:8]})"
    with openai.OpenAI(base_url=cached.url + "/v1", api_key="sk-x", max_retries=0) as client:
        kwargs = {"model": MODEL, "messages": [{"role": "user", "content": question}],
                  "tools": TOOLS, **V1_LOGPROBS}
        streamed = list(client.chat.completions.create(stream=True, **kwargs))
        whole = client.chat.completions.with_raw_response.create(**kwargs)
    assert whole.headers["x-cache"] == "HIT-MEMORY"
    message = whole.parse().choices[0].message
    streamed_call = next(c.choices[0].delta.tool_calls[0] for c in streamed
                         if c.choices and c.choices[0].delta.tool_calls)
    assert message.tool_calls[0].function.model_dump() == streamed_call.function.model_dump()
    assert (message.tool_calls[0].model_extra or {}).get("index") == streamed_call.index == 0
    native = ollama.Client(host=cached.url)
    try:
        kwargs = {"model": MODEL, "messages": [{"role": "user", "content": question}],
                  "tools": TOOLS, "logprobs": True}
        parts = list(native.chat(stream=True, **kwargs))
        answer = native.chat(stream=False, **kwargs)
    finally:
        native.close()
    calls = [call for part in parts for call in part.message.tool_calls or ()]
    assert answer.message.tool_calls == calls and calls[0].function.name == "get_weather"
    assert [entry.token for entry in answer.logprobs] == \
        [entry.token for part in parts for entry in part.logprobs or ()]


# --- the reverse: a stored whole answer served as a stream --------------------------------

@pytest.mark.parametrize("path, include_usage", [
    *((path, False) for path in PATHS),
    *((path, True) for path in PATHS if path.startswith("/v1/"))])  # no such option on /api
def test_a_stream_cut_from_a_stored_body_is_the_upstreams_stream(standin, path,
                                                                 include_usage):
    """An entry stored as a body (an upstream that answered whole) streams as the stand-in
    streams the same answer: its reasoning, text, tool calls and log probabilities."""
    body = requests_of(f"Weather in Paris? ({uuid.uuid4().hex[:8]})")[path]
    if include_usage:
        body = {**body, "stream_options": {"include_usage": True}}
    raw = requests.post(standin.url + path.partition("#")[0], json={**body, "stream": False},
                        timeout=30).content
    surface = "ollama" if path.startswith("/api/") else "openai"
    endpoint = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
                "/api/chat": "chat", "/api/generate": "generate"}[path.partition("#")[0]]
    entry = Entry(surface, endpoint, MODEL, time.time(), body=raw)
    replay.prepare(entry)
    expected = direct(standin, path, body, True)
    if endpoint == "completions":  # what a body cannot tell: Ollama's `"text":""` chunk
        # per reasoning token it dropped, and a zero `usage` on each chunk before the last
        expected = [chunk if chunk == "[DONE]" or not chunk["choices"] else
                    {k: v for k, v in chunk.items() if k != "usage"}
                    for chunk in expected if chunk == "[DONE]" or not chunk["choices"]
                    or chunk["choices"][0]["text"] or chunk["choices"][0]["finish_reason"]]
    for stored in (entry, decode_entry(encode_entry(entry))):  # warm, and from disk
        response = replay.serve_entry(stored, replay.Shape(True, include_usage), {})
        frames = [json.loads(f.raw) if not f.is_done else "[DONE]" for f in response.frames]
        assert normalized(frames) == expected
