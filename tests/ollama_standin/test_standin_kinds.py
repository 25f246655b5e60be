"""The stand-in as a fake upstream of each kind (`StandInConfig.kind`): an OpenAI-only API
(no `/api/*`, no `/v1/messages`) and Claude's API (`/v1/messages` and `/v1/models` only,
`x-api-key` and `anthropic-version`), each with its own error shapes, counted, faulted
and delayed as the Ollama kind is; driven with `requests` and the official clients."""

from __future__ import annotations

import json
import subprocess
import sys

import anthropic
import openai
import pytest
import requests
from helpers import wait_for

from bridge.ollama_standin import Fault
from bridge.ollama_standin.wire import answer_text, reasoning_text

KEY = "sk-upstream-kind-test-0123456789"
VERSION = {"anthropic-version": "2023-06-01"}
HI = [{"role": "user", "content": "hi"}]
WORDS = "one two three four five six seven eight nine ten"
TOOLS = [{"name": "lookup", "description": "Look a term up",
          "input_schema": {"type": "object", "properties": {"term": {"type": "string"}},
                           "required": ["term"]}}]


def openai_not_found(method: str, path: str) -> dict:
    return {"error": {"message": f"Invalid URL ({method} {path})",
                      "type": "invalid_request_error", "param": None, "code": None}}


def anthropic_error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each event of an Anthropic SSE answer."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.fixture
def openai_only(standin):
    standin.configure(kind="openai")
    return standin


@pytest.fixture
def claude(standin):
    standin.configure(kind="anthropic")
    return standin


def oai(standin, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=standin.url + "/v1", api_key=key, max_retries=0, timeout=10)


def claude_client(standin, key: str = "x") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=standin.url, api_key=key, max_retries=0, timeout=10)


# ---------------------------------------------------------------- OpenAI-only


def test_openai_kind_serves_the_openai_api_through_the_openai_client(openai_only):
    sdk = oai(openai_only)
    answer = sdk.chat.completions.create(model="llama3.2", messages=HI)
    assert answer.choices[0].message.content == answer_text("hi", 1)
    pieces = [chunk.choices[0].delta.content for chunk in sdk.chat.completions.create(
        model="llama3.2", messages=HI, stream=True) if chunk.choices]
    assert "".join(piece or "" for piece in pieces) == answer_text("hi", 1)
    assert sdk.completions.create(model="llama3.2", prompt="hi").choices[0].text
    vectors = sdk.embeddings.create(model="all-minilm", input=["a", "b"]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) > 0
    assert "qwen3:latest" in [model.id for model in sdk.models.list()]
    assert sdk.models.retrieve("qwen3:latest").id == "qwen3:latest"
    assert openai_only.count("/v1/chat/completions") == 2
    assert openai_only.count("/v1/embeddings") == 1


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/api/embed"),
    ("GET", "/api/tags"), ("POST", "/api/show"), ("GET", "/api/version"),
    ("POST", "/v1/messages"), ("POST", "/v1/responses"), ("GET", "/")])
def test_openai_kind_answers_everything_else_with_openais_404(openai_only, method, path):
    answer = requests.request(method, openai_only.url + path, json={"model": "llama3.2"},
                              timeout=10)
    assert answer.status_code == 404
    assert answer.json() == openai_not_found(method, path)
    assert openai_only.count(path) == 1


def test_openai_kind_wants_a_bearer_key_in_openais_shape(openai_only):
    openai_only.configure(api_key=KEY)
    url = openai_only.url + "/v1/chat/completions"
    body = {"model": "llama3.2", "messages": HI}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": KEY}):
        refused = requests.post(url, json=body, headers=headers, timeout=10)
        assert refused.status_code == 401, headers
        error = refused.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    native = requests.post(openai_only.url + "/api/chat", json=body, timeout=10)
    assert native.status_code == 401 and native.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        oai(openai_only, "wrong").chat.completions.create(model="llama3.2", messages=HI)
    answer = oai(openai_only, KEY).chat.completions.create(model="llama3.2", messages=HI)
    assert answer.choices[0].message.content == answer_text("hi", 1)


def test_openai_kind_with_reasoning_content_is_deepseeks_api(openai_only):
    openai_only.configure(think="reasoning_content")
    whole = requests.post(openai_only.url + "/v1/chat/completions", timeout=10, json={
        "model": "deepseek-r1:7b", "messages": HI}).json()["choices"][0]["message"]
    assert whole["reasoning_content"] == reasoning_text("hi")
    assert whole["content"] == answer_text("hi", 1) and "reasoning" not in whole
    chunks = oai(openai_only).chat.completions.create(model="deepseek-r1:7b", messages=HI,
                                                      stream=True)
    deltas = [chunk.choices[0].delta.model_dump() for chunk in chunks if chunk.choices]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == reasoning_text("hi")
    assert "".join(d.get("content") or "" for d in deltas) == answer_text("hi", 1)


def test_openai_kind_faults_keep_openais_shape_and_retry_after(openai_only):
    openai_only.push_fault(Fault("status", status=429, retry_after=7, body="slow down"))
    refused = requests.post(openai_only.url + "/v1/chat/completions", timeout=10,
                            json={"model": "llama3.2", "messages": HI})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "7"
    assert refused.json()["error"]["message"] == "slow down"
    openai_only.push_fault(Fault("status", status=500))
    with pytest.raises(openai.InternalServerError) as failed:
        oai(openai_only).chat.completions.create(model="llama3.2", messages=HI)
    assert failed.value.body["message"] == "llama runner process has terminated: exit status 2"
    assert openai_only.count("/v1/chat/completions") == 2


# ---------------------------------------------------------------- Anthropic-only


def test_anthropic_kind_answers_messages_through_the_anthropic_client(claude):
    claude.configure(api_key=KEY)
    sdk = claude_client(claude, KEY)
    message = sdk.messages.create(model="llama3.2", max_tokens=100, messages=HI)
    assert [(block.type, block.text) for block in message.content] == [
        ("text", answer_text("hi", 1))]
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    with sdk.messages.stream(model="llama3.2", max_tokens=100, messages=HI) as stream:
        assert "".join(stream.text_stream) == answer_text("hi", 1)
    with sdk.messages.stream(model="qwen2.5", max_tokens=100, tools=TOOLS,
                             messages=[{"role": "user", "content": "cats"}]) as stream:
        called = stream.get_final_message()
    assert called.stop_reason == "tool_use"
    [use] = called.content
    assert (use.type, use.name, use.input) == ("tool_use", "lookup", {"term": "cats"})
    after = sdk.messages.create(model="qwen2.5", max_tokens=100, tools=TOOLS, messages=[
        {"role": "user", "content": "cats"},
        {"role": "assistant", "content": [use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "a small feline"}]}])
    assert after.stop_reason == "end_turn" and after.content[0].type == "text"
    thinking = sdk.messages.create(model="deepseek-r1:7b", max_tokens=400, messages=HI,
                                   thinking={"type": "enabled", "budget_tokens": 200})
    assert [block.type for block in thinking.content] == ["thinking", "text"]
    assert thinking.content[0].thinking == reasoning_text("hi")
    assert claude.count("/v1/messages") == 5
    assert claude.count("/api/chat") == 0
    assert all({name.lower(): value for name, value in r.headers.items()}["x-api-key"] == KEY
               for r in claude.requests)


def test_anthropic_kind_lists_models_in_anthropics_shape(claude):
    claude.configure(models=["claude-sonnet-4-5", "qwen3:latest"])
    listed = requests.get(claude.url + "/v1/models", headers=VERSION, timeout=10)
    assert listed.status_code == 200
    body = listed.json()
    assert [model["id"] for model in body["data"]] == ["claude-sonnet-4-5", "qwen3:latest"]
    assert body["has_more"] is False
    assert (body["first_id"], body["last_id"]) == ("claude-sonnet-4-5", "qwen3:latest")
    assert all(set(model) == {"type", "id", "display_name", "created_at"}
               and model["type"] == "model" for model in body["data"])
    sdk = claude_client(claude)
    assert [model.id for model in sdk.models.list()] == ["claude-sonnet-4-5", "qwen3:latest"]
    one = sdk.models.retrieve("qwen3:latest")
    assert one.id == "qwen3:latest" and one.created_at.year >= 2025
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.models.retrieve("no-such-model")
    assert missing.value.body == anthropic_error("not_found_error", "model: no-such-model")


def test_anthropic_kind_wants_x_api_key_and_anthropic_version(claude):
    claude.configure(api_key=KEY)
    url = claude.url + "/v1/models"
    cases = [({**VERSION}, 401, anthropic_error("authentication_error",
                                                "x-api-key header is required")),
             ({**VERSION, "authorization": f"Bearer {KEY}"}, 401,
              anthropic_error("authentication_error", "x-api-key header is required")),
             ({**VERSION, "x-api-key": "wrong"}, 401,
              anthropic_error("authentication_error", "invalid x-api-key")),
             ({"x-api-key": KEY}, 400, anthropic_error(
                 "invalid_request_error", "anthropic-version: header is required"))]
    for headers, status, body in cases:
        refused = requests.get(url, headers=headers, timeout=10)
        assert (refused.status_code, refused.json()) == (status, body), headers
    with pytest.raises(anthropic.AuthenticationError):
        claude_client(claude, "wrong").messages.create(model="llama3.2", max_tokens=10,
                                                       messages=HI)
    assert requests.get(url, headers={**VERSION, "x-api-key": KEY}, timeout=10).ok


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/chat"), ("GET", "/api/tags"), ("GET", "/api/version"),
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"), ("POST", "/v1/responses"), ("GET", "/v1/messages"),
    ("GET", "/")])
def test_anthropic_kind_answers_everything_else_with_anthropics_404(claude, method, path):
    answer = requests.request(method, claude.url + path, json={"model": "llama3.2"},
                              headers=VERSION, timeout=10)
    assert answer.status_code == 404
    assert answer.json() == anthropic_error("not_found_error", "Not Found")
    assert claude.count(path) == 1


def test_anthropic_kind_errors_and_faults_in_anthropics_shape(claude):
    sdk = claude_client(claude)
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(model="no-such-model", max_tokens=10, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"
    claude.push_fault(Fault("status", status=429, retry_after=3, body="rate limited"))
    limited = requests.post(claude.url + "/v1/messages", headers=VERSION, timeout=10,
                            json={"model": "llama3.2", "max_tokens": 10, "messages": HI})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert limited.json() == anthropic_error("rate_limit_error", "rate limited")
    for status, kind in ((500, "api_error"), (529, "overloaded_error"),
                         (401, "authentication_error")):
        claude.push_fault(Fault("status", status=status, body="no"))
        failed = requests.post(claude.url + "/v1/messages", headers=VERSION, timeout=10,
                               json={"model": "llama3.2", "max_tokens": 10, "messages": HI})
        assert (failed.status_code, failed.json()) == (status, anthropic_error(kind, "no"))
    claude.push_fault(Fault("inband", after_chunks=2, body="runner died"))
    cut = requests.post(claude.url + "/v1/messages", headers=VERSION, timeout=10, json={
        "model": "llama3.2", "max_tokens": 100, "stream": True, "messages": HI})
    events = sse_events(cut.text)
    assert events[0][0] == "message_start"
    assert events[-1] == ("error", anthropic_error("api_error", "runner died"))
    assert claude.count("/v1/messages") == 6


def test_anthropic_kind_streams_progressively_with_the_token_delay(claude):
    claude.configure(token_delay=0.2)
    with requests.post(claude.url + "/v1/messages", headers=VERSION, timeout=30, stream=True,
                       json={"model": "llama3.2", "max_tokens": 100, "stream": True,
                             "messages": [{"role": "user", "content": WORDS}]}) as answer:
        lines = answer.iter_lines()
        assert next(lines) == b"event: message_start"
        assert claude.in_flight == 1  # the first event is here, the rest still to come
        rest = b"\n".join(lines)
    assert rest.rstrip().endswith(b'data: {"type":"message_stop"}')
    wait_for(lambda: claude.in_flight == 0, what="the stream to end")


# ---------------------------------------------------------------- steering


def test_kind_is_set_through_the_control_endpoint_and_reset(standin):
    control = standin.url + "/_standin/config"
    assert requests.get(control, timeout=10).json()["kind"] == "ollama"
    assert requests.post(control, json={"kind": "openai"}, timeout=10).json()["kind"] == "openai"
    assert requests.post(standin.url + "/api/tags", timeout=10).status_code == 404
    bad = requests.post(control, json={"kind": "gemini"}, timeout=10)
    assert bad.status_code == 400 and "kind must be one of" in bad.json()["error"]
    assert standin.config.kind == "openai"
    requests.post(standin.url + "/_standin/reset", timeout=10)
    assert standin.config.kind == "ollama"
    assert requests.get(standin.url + "/api/tags", timeout=10).status_code == 200


def test_kind_flag_of_the_stand_alone_stand_in():
    process = subprocess.Popen([sys.executable, "-m", "bridge.ollama_standin", "--port", "0",
                                "--kind", "anthropic", "--api-key", KEY],
                               stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        sdk = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, timeout=10)
        assert sdk.messages.create(model="llama3.2", max_tokens=10, messages=HI).content
        assert requests.post(url + "/api/chat", timeout=10).status_code == 401
        native = requests.post(url + "/api/chat", headers={**VERSION, "x-api-key": KEY},
                               timeout=10)
        assert native.json() == anthropic_error("not_found_error", "Not Found")
    finally:
        process.terminate()
        process.wait(timeout=10)
