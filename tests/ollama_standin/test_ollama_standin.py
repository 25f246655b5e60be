"""The Ollama stand-in, through real HTTP: raw bytes with `requests`, the official
`openai` SDK and the official `ollama` client, faults, timing, counters, and the
control endpoints of the stand-alone process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import ollama
import openai
import pytest
import requests
from helpers import wait_for
from standin_bytes import DONE, HELLO, REASONING, chat, frame, masked, sse_events

import bridge.ollama_standin as standin_module
from bridge.ollama_standin import Fault, StandIn, StandInConfig

REPO = Path(standin_module.__file__).resolve().parents[2]


@pytest.fixture
def oai(standin):
    return openai.OpenAI(base_url=standin.url + "/v1", api_key="x", max_retries=0)


# ---------------------------------------------------------------- /v1, non-stream


def test_chat_non_stream_bytes(standin):
    r = chat(standin, {"model": "llama3.2", "messages": [{"role": "user", "content": "<a&b>"}]})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert "Content-Length" in r.headers
    assert r.content.endswith(b"}\n")
    assert b'"content":"Echo: \\u003ca\\u0026b\\u003e"' in r.content  # Go's HTML escaping
    assert b", " not in r.content and b": " not in r.content.replace(b"Echo: ", b"")
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and 0 <= int(body["id"][9:]) <= 998
    assert body["object"] == "chat.completion"
    assert body["model"] == "llama3.2" and body["system_fingerprint"] == "fp_ollama"
    assert body["choices"] == [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "Echo: <a&b>"}}]
    usage = body["usage"]
    assert usage["completion_tokens"] == 2
    assert usage["total_tokens"] == usage["prompt_tokens"] + 2


def test_chat_with_openai_sdk_and_reasoning_field(oai):
    completion = oai.chat.completions.create(model="qwen3", messages=HELLO)
    message = completion.choices[0].message
    assert message.content == "Echo: hello world"
    assert message.reasoning == REASONING
    assert completion.choices[0].finish_reason == "stop"


def test_history_changes_the_answer(oai):
    history = [{"role": "system", "content": "be brief"}, *HELLO,
               {"role": "assistant", "content": "Echo: hello world"},
               {"role": "user", "content": "again"}]
    completion = oai.chat.completions.create(model="llama3.2", messages=history)
    assert completion.choices[0].message.content == "Echo (4 messages): again"


@pytest.mark.parametrize(("mode", "content", "reasoning"), [
    ("none", "Echo: hello world", None),
    ("tags", f"<think>\n{REASONING}\n</think>\n\nEcho: hello world", None),
    ("tags-no-open", f"{REASONING}\n</think>\n\nEcho: hello world", None),
    ("field", "Echo: hello world", REASONING),
])
def test_think_modes(standin, mode, content, reasoning):
    standin.config.think = mode
    message = chat(standin, {"model": "llama3.2", "messages": HELLO}).json()[
        "choices"][0]["message"]
    assert message["content"] == content
    assert message.get("reasoning") == reasoning


def test_think_header_overrides_and_thinking_unsupported(standin):
    r = chat(standin, {"model": "qwen3", "messages": HELLO}, {"X-Standin-Think": "tags"})
    assert r.json()["choices"][0]["message"]["content"].startswith("<think>\n")
    r = chat(standin, {"model": "llama3.2", "messages": HELLO, "reasoning_effort": "high"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == '"llama3.2" does not support thinking'


def test_max_tokens_leaves_think_block_unclosed(standin):
    standin.config.think = "tags"
    body = chat(standin, {"model": "llama3.2", "messages": HELLO, "max_tokens": 3}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "<think>\nOkay, the user"
    assert body["usage"]["completion_tokens"] == 3


def test_completions_and_models(standin, oai):
    completion = oai.completions.create(model="qwen2.5", prompt="say hi")
    assert completion.id.startswith("cmpl-") and completion.choices[0].text == "Echo: say hi"
    chunks = list(oai.completions.create(model="qwen2.5", prompt="say hi", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "Echo: say hi"
    assert chunks[-1].choices[0].finish_reason == "stop"
    ids = [m.id for m in oai.models.list()]
    assert ids == standin.config.models
    assert oai.models.retrieve("qwen3:latest").owned_by == "library"
    standin.config.models = []
    assert requests.get(standin.url + "/v1/models").content == \
        b'{"object":"list","data":null}\n'


def test_embeddings(standin, oai):
    first = oai.embeddings.create(model="all-minilm", input=["a", "b"])  # SDK asks base64
    again = requests.post(standin.url + "/v1/embeddings",
                          json={"model": "all-minilm", "input": ["a", "b"]}).json()
    for got, want in zip(first.data, again["data"], strict=True):
        assert got.embedding == pytest.approx(want["embedding"], abs=1e-6)
    assert len(first.data[0].embedding) == 384 and first.data[0].embedding != again[
        "data"][1]["embedding"]
    assert again["usage"]["prompt_tokens"] == again["usage"]["total_tokens"] > 0


def cosine(first: list[float], second: list[float]) -> float:
    return sum(a * b for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("path", ["/v1/embeddings", "/api/embed"])
def test_embeddings_are_hashed_bags_of_words(standin, path):
    """Texts sharing words are close, texts sharing none are not (what the semantic
    cache's tests rely on): each word but a few stop words is one hashed coordinate."""
    texts = ["What is the capital of France?", "what's the capital city of France",
             "How do I reset my password?", "France capital", ""]
    answer = requests.post(standin.url + path, json={"model": "all-minilm", "input": texts},
                           timeout=10).json()
    vectors = answer["embeddings"] if path == "/api/embed" else [
        item["embedding"] for item in answer["data"]]
    for vector in vectors:
        assert len(vector) == 384 and cosine(vector, vector) == pytest.approx(1.0, abs=1e-4)
    capital, paraphrase, password, same_words, empty = vectors
    assert cosine(capital, paraphrase) == pytest.approx(2 / 6 ** 0.5, abs=1e-4)  # 0.816
    assert cosine(capital, same_words) == pytest.approx(1.0, abs=1e-4)  # order, case, stops
    assert abs(cosine(capital, password)) < 0.01
    assert empty == [1.0] + [0.0] * 383


@pytest.mark.parametrize("path", ["/v1/embeddings", "/api/embed"])
def test_embedding_input_of_the_wrong_type_is_a_400_not_a_dropped_connection(standin, path):
    response = requests.post(standin.url + path, json={"model": "all-minilm", "input": [None]})
    assert response.status_code == 400 and "error" in response.json()


# ---------------------------------------------------------------- /v1, streams


@pytest.mark.parametrize("shape", ["new", "legacy"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_streams_parse_in_openai_sdk(oai, standin, shape, include_usage):
    standin.config.shape = shape
    chunks = list(oai.chat.completions.create(
        model="qwen3", messages=HELLO, stream=True,
        stream_options={"include_usage": True} if include_usage else None))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning", None) or ""
                        for c in chunks if c.choices)
    assert (content, reasoning) == ("Echo: hello world", REASONING)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = [c.usage for c in chunks if not c.choices]
    assert len(usage) == include_usage
    if include_usage:
        assert usage[0].completion_tokens == 18  # one chunk per token
        assert len(chunks) == 18 + 2


def test_new_shape_bytes(standin):
    r = chat(standin, {"model": "qwen3", "messages": HELLO, "stream": True,
                       "stream_options": {"include_usage": True}})
    assert r.headers["Content-Type"] == "text/event-stream"
    assert r.headers["Transfer-Encoding"] == "chunked"
    events, done = sse_events(r)
    assert done
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas[0] == {"role": "assistant", "content": "", "reasoning": "Okay,"}
    assert all("role" not in d for d in deltas[1:])
    assert deltas[-1] == {} and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["prompt_tokens"] > 0
    assert len({e["created"] for e in events}) == 1 and len({e["id"] for e in events}) == 1


def test_legacy_shape_bytes(standin):
    standin.config.shape = "legacy"
    r = chat(standin, {"model": "llama3.2", "messages": HELLO, "stream": True})
    events, done = sse_events(r)
    assert done
    deltas = [e["choices"][0]["delta"] for e in events]
    assert all(d["role"] == "assistant" and "content" in d for d in deltas)
    assert deltas[-1] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(e["choices"] for e in events)  # no usage chunk unasked


def test_tags_are_split_inside_the_tag(standin):
    standin.config.think = "tags"
    r = chat(standin, {"model": "llama3.2", "messages": HELLO, "stream": True})
    events, _ = sse_events(r)
    pieces = [e["choices"][0]["delta"].get("content") for e in events]
    assert "\n</thi" in pieces and "nk>\n\n" in pieces and "<th" in pieces


def test_empty_completion_stream(standin):
    r = chat(standin, {"model": "llama3.2", "messages": HELLO, "stream": True, "max_tokens": 0})
    events, _ = sse_events(r)
    assert [e["choices"][0]["delta"] for e in events] == [{"role": "assistant", "content": ""},
                                                          {}]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"", 400, "EOF"),
    (b"xyz", 400, "invalid character 'x' looking for beginning of value"),
    (b'{"model": "llama3.2", "messages": [}', 400,
     "invalid character '}' looking for beginning of value"),
    (b'{"model": "llama3.2"', 400, "unexpected EOF"),
    (b'{"model": "llama3.2", "messages": []}', 400, "[] is too short - 'messages'"),
    (b'{"model": "foo", "messages": [{"role": "user", "content": "x"}]}', 404,
     "model 'foo' not found"),
])
def test_openai_errors(standin, body, status, message):
    r = requests.post(standin.url + "/v1/chat/completions", data=body)
    assert r.status_code == status
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    assert r.json() == {"error": {"message": message, "type": kind, "param": None,
                                  "code": None}}
    # Refused before the handler (gin's c.JSON), or by it (Ollama's json.Encoder).
    early = status == 400
    assert r.headers["Content-Type"] == (
        "application/json; charset=utf-8" if early else "application/json")
    assert r.content.endswith(b"}") if early else r.content.endswith(b"}\n")


def test_plain_text_errors_and_native_errors(standin):
    r = requests.get(standin.url + "/v1/chat/completions")
    assert (r.status_code, r.text) == (405, "405 method not allowed")
    r = requests.get(standin.url + "/nowhere")
    assert (r.status_code, r.text) == (404, "404 page not found")
    r = requests.post(standin.url + "/api/chat", json={"model": "foo", "messages": HELLO})
    assert (r.status_code, r.json()) == (404, {"error": "model 'foo' not found"})
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    r = requests.post(standin.url + "/api/generate", data=b"")
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=standin.url + "/v1", api_key="x").chat.completions.create(
            model="nope", messages=HELLO)


# ---------------------------------------------------------------- native API


def test_native_chat_with_ollama_client(standin):
    client = ollama.Client(host=standin.url)
    parts = list(client.chat(model="qwen3", messages=HELLO, stream=True))
    assert "".join(p.message.content for p in parts) == "Echo: hello world"
    assert "".join(p.message.thinking or "" for p in parts) == REASONING
    assert parts[-1].done and parts[-1].done_reason == "stop" and parts[-1].eval_count == 18
    whole = client.chat(model="qwen3", messages=HELLO, think=False)
    assert whole.message.content.startswith("<think>\n") and whole.message.thinking is None
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="missing", messages=HELLO)
    assert info.value.status_code == 404


def test_native_generate_embed_and_listing(standin):
    client = ollama.Client(host=standin.url)
    result = client.generate(model="deepseek-r1:7b", prompt="why", options={"num_predict": 2})
    assert (result.response, result.thinking) == ("", "Okay, the")
    assert result.done_reason == "length"
    assert result.context
    parts = list(client.generate(model="llama3.2", prompt="why", stream=True))
    assert "".join(p.response for p in parts) == "Echo: why" and parts[-1].context
    embedded = client.embed(model="all-minilm", input=["a", "b"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 384
    assert [m.model for m in client.list().models] == standin.config.models
    assert client.show("qwen3").capabilities == ["completion", "tools", "thinking"]
    assert client.ps().models[0].name == "llama3.2:latest"


def test_native_stream_bytes_and_load(standin):
    r = requests.post(standin.url + "/api/chat", json={"model": "llama3.2", "messages": HELLO})
    assert r.headers["Content-Type"] == "application/x-ndjson"
    lines = r.content.decode().splitlines()
    last = json.loads(lines[-1])
    assert last["done"] is True and last["message"] == {"role": "assistant", "content": ""}
    assert last["created_at"].endswith("Z") and "T" in last["created_at"]
    assert list(last)[:5] == ["model", "created_at", "message", "done", "done_reason"]
    r = requests.post(standin.url + "/api/chat", json={"model": "llama3.2", "messages": []})
    assert r.json()["done_reason"] == "load"


# ---------------------------------------------------------------- faults


def test_status_fault_with_retry_after_is_counted(standin, oai):
    standin.push_fault(Fault("status", status=429, retry_after=2), times=2)
    for _ in range(2):
        r = chat(standin, {"model": "llama3.2", "messages": HELLO})
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
        assert r.json()["error"]["type"] == "api_error"
    assert chat(standin, {"model": "llama3.2", "messages": HELLO}).status_code == 200
    standin.push_fault(Fault("status", status=503, body="busy"))
    r = requests.post(standin.url + "/api/chat", json={"model": "llama3.2", "messages": HELLO})
    assert (r.status_code, r.json()) == (503, {"error": "busy"})
    assert standin.count("/v1/chat/completions") == 3 and standin.count() == 4


def test_faults_are_fifo_and_filtered_by_path(standin):
    standin.push_fault(Fault("status", status=500, path="/api/"))
    standin.push_fault(Fault("status", status=502))
    assert chat(standin, {"model": "llama3.2", "messages": HELLO}).status_code == 502
    assert requests.get(standin.url + "/api/tags").status_code == 500
    assert requests.get(standin.url + "/api/tags").status_code == 200


@pytest.mark.parametrize("native", [False, True])
def test_cut_stream_has_no_end(standin, native):
    standin.push_fault(Fault("cut", after_chunks=3))
    url = standin.url + ("/api/chat" if native else "/v1/chat/completions")
    r = requests.post(url, json={"model": "llama3.2", "messages": HELLO, "stream": True},
                      stream=True)
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in r.iter_content(None):
            received += chunk
    assert received.count(b"\n\n" if not native else b"\n") == 3
    assert b"[DONE]" not in received and b'"done":true' not in received


def test_reset_and_refuse_give_connection_errors(standin):
    for kind in ("reset", "refuse"):
        standin.push_fault(Fault(kind))
        with pytest.raises(requests.exceptions.ConnectionError):
            chat(standin, {"model": "llama3.2", "messages": HELLO})
    assert standin.count() == 2
    assert chat(standin, {"model": "llama3.2", "messages": HELLO}).status_code == 200


def test_hang_and_slow_headers(standin):
    standin.push_fault(Fault("hang", delay=5))
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        chat(standin, {"model": "llama3.2", "messages": HELLO}, timeout=0.3)
    assert time.monotonic() - start < 1
    standin.push_fault(Fault("slow_headers", delay=0.3))
    start = time.monotonic()
    assert chat(standin, {"model": "llama3.2", "messages": HELLO}).status_code == 200
    assert time.monotonic() - start >= 0.3


# ---------------------------------------------------------------- timing and counters


def test_first_token_delay_holds_back_the_headers(standin):
    standin.config.first_token_delay = 0.3
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        chat(standin, {"model": "llama3.2", "messages": HELLO, "stream": True}, timeout=0.15)
    r = chat(standin, {"model": "llama3.2", "messages": HELLO, "stream": True},
             {"X-Standin-First-Token-Delay": "0.2"}, stream=True)
    assert time.monotonic() - start >= 0.35 and r.status_code == 200
    r.close()
    standin.config.first_token_delay = 0
    start = time.monotonic()
    chat(standin, {"model": "llama3.2", "messages": HELLO, "stream": True},
         {"X-Standin-Token-Delay": "0.02"})
    assert time.monotonic() - start >= 0.02 * 4


def test_in_flight_and_closed_early(standin):
    standin.config.token_delay = 0.05
    threads = [threading.Thread(target=chat, args=(standin, {"model": "llama3.2",
                                                             "messages": HELLO,
                                                             "stream": True}))
               for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert standin.in_flight == 4
    for t in threads:
        t.join()
    assert standin.in_flight == 0 and standin.max_in_flight == 4
    assert standin.closed_early == 0
    body = json.dumps({"model": "llama3.2", "messages": HELLO, "stream": True}).encode()
    with socket.create_connection((standin.host, standin.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    # hung up mid-stream
    deadline = time.monotonic() + 2
    while standin.closed_early == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert standin.closed_early == 1


def test_keep_alive_is_fast_and_recorded(standin):
    with requests.Session() as session:
        start = time.monotonic()
        for i in range(50):
            session.post(standin.url + "/v1/chat/completions",
                         json={"model": "llama3.2", "messages": HELLO},
                         headers={"X-Trace": str(i)}).raise_for_status()
        assert time.monotonic() - start < 1.0  # no 40 ms Nagle stalls
    assert standin.count("/v1/chat/completions") == 50
    last = standin.requests[-1]
    assert last.method == "POST" and last.headers["X-Trace"] == "49"
    assert last.json()["model"] == "llama3.2"


def test_max_recorded_keeps_the_last_requests():
    with StandIn(max_recorded=2) as s:
        for i in range(3):
            requests.get(s.url + f"/api/tags?n={i}")
        assert [r.query for r in s.requests] == ["n=1", "n=2"] and s.count("/api/tags") == 3


def test_reset_restores_config_and_stop_start_keeps_port():
    s = StandIn(StandInConfig(shape="legacy")).start()
    try:
        url = s.url
        s.config.shape = "new"
        s.config.token_delay = 1
        chat(s, {"model": "llama3.2", "messages": HELLO, "stream": False})
        s.reset()
        assert (s.config.shape, s.config.token_delay, s.count(), s.requests) == (
            "legacy", 0, 0, [])
        s.stop()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url + "/api/version", timeout=1)
        s.start()
        assert s.url == url and requests.get(url + "/api/version").status_code == 200
    finally:
        s.stop()


# ---------------------------------------------------------------- stand-alone process


def test_subprocess_and_control_endpoints():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.ollama_standin", "--port", "0", "--shape", "legacy",
         "--catalogue", "any"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        r = requests.post(url + "/v1/chat/completions", json={"model": "llama3.2",
                                                               "messages": HELLO,
                                                               "stream": True})
        assert b'"delta":{"role":"assistant","content":"Echo:"}' in r.content
        assert requests.get(url + "/api/version").content == b'{"version":"0.32.5"}'
        assert requests.post(url + "/api/show", json={"model": "not-listed"}).json()[
            "capabilities"] == ["completion"]  # --catalogue any: every name answers
        assert requests.post(url + "/_standin/config", json={"shape": "new"}).json()[
            "shape"] == "new"
        assert requests.post(url + "/_standin/config", json={"shape": "x"}).status_code == 400
        requests.post(url + "/_standin/faults",
                      json={"kind": "status", "status": 503, "retry_after": 1.5, "times": 2})
        for _ in range(2):
            r = requests.get(url + "/api/tags")
            assert (r.status_code, r.headers["Retry-After"]) == (503, "1.5")
        stats = requests.get(url + "/_standin/stats").json()
        assert stats["count"] == 5 and stats["counts_by_path"] == {
            "/v1/chat/completions": 1, "/api/tags": 2, "/api/version": 1, "/api/show": 1}
        assert stats["requests"][0]["body"].startswith('{"model": "llama3.2"')
        assert stats["in_flight"] == 0 and stats["max_in_flight"] == 1
        assert "requests" not in requests.get(url + "/_standin/stats?requests=0").json()
        requests.post(url + "/_standin/reset")
        assert requests.get(url + "/_standin/stats").json()["count"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- today's Ollama (issue 18)
# Expected bytes come from shared/reference/ollama-wire-format.md; per-call values (ids,
# `created`, `created_at`) are masked on both sides before comparing.

def usage_frame(prompt: int, completion: int, model: str = "qwen3") -> bytes:
    return (b'data: {"id":"chatcmpl-87","object":"chat.completion.chunk","created":1755000000,'
            b'"model":"%s","system_fingerprint":"fp_ollama","choices":[],"usage":'
            b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
            % (model.encode(), prompt, completion, prompt + completion))


RAW_R1 = f"<think>\n{REASONING}\n</think>\n\nEcho: hello world"  # thinking off: raw output
THINKING = ["qwen3", "qwen3:8b", "deepseek-r1:7b", "qwq", "gpt-oss:20b"]
NOT_THINKING = ["llama3.2", "qwen2.5", "qwen3-coder:30b", "qwen3:4b-instruct-2507-q4_K_M",
                "deepseek-coder"]


@pytest.fixture
def every_model(standin):
    """The stand-in answering any model name (the demo's catalogue)."""
    standin.configure(catalogue="any")
    return standin


def message_of(standin, body, path="/v1/chat/completions"):
    r = requests.post(standin.url + path, json={"messages": HELLO, "stream": False, **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"] if path.startswith("/v1") else r.json()["message"]


@pytest.mark.parametrize("model", THINKING)
def test_1_thinking_models_reason_in_a_field_by_default(every_model, model):
    assert message_of(every_model, {"model": model}) == {
        "role": "assistant", "content": "Echo: hello world", "reasoning": REASONING}
    assert message_of(every_model, {"model": model}, "/api/chat") == {
        "role": "assistant", "content": "Echo: hello world", "thinking": REASONING}
    for level in (True, "high"):
        assert message_of(every_model, {"model": model, "think": level}, "/api/chat")[
            "thinking"] == REASONING


@pytest.mark.parametrize("model", THINKING[:4])
def test_1_thinking_off_gives_the_raw_output(every_model, model):
    off = message_of(every_model, {"model": model, "reasoning_effort": "none"})
    assert off == {"role": "assistant", "content": RAW_R1}
    assert message_of(every_model, {"model": model, "think": False}, "/api/chat") == off


def test_1_gpt_oss_reasons_only_in_a_field(every_model):
    assert message_of(every_model, {"model": "gpt-oss:20b", "think": False}, "/api/chat")[
        "thinking"] == REASONING


@pytest.mark.parametrize("model", NOT_THINKING)
def test_1_models_without_thinking_never_reason_and_refuse_think(every_model, model):
    plain = {"role": "assistant", "content": "Echo: hello world"}
    assert message_of(every_model, {"model": model}) == plain
    assert message_of(every_model, {"model": model, "think": False}, "/api/chat") == plain
    r = requests.post(every_model.url + "/api/chat",
                      json={"model": model, "messages": HELLO, "think": True})
    assert (r.status_code, r.content) == (
        400, b'{"error":"\\"%s\\" does not support thinking"}' % model.encode())
    r = chat(every_model, {"model": model, "messages": HELLO, "reasoning_effort": "low"})
    assert r.status_code == 400 and r.content == (
        b'{"error":{"message":"\\"%s\\" does not support thinking","type":'
        b'"invalid_request_error","param":null,"code":null}}\n' % model.encode())


@pytest.mark.parametrize(("mode", "content", "reasoning"), [
    ("tags", RAW_R1, None),
    ("tags-no-open", f"{REASONING}\n</think>\n\nEcho: hello world", None),
    ("none", "Echo: hello world", None),
])
def test_1_other_upstreams_shapes_stay_available(standin, mode, content, reasoning):
    """A forced think mode wins over the model and the request, as other upstreams
    (vLLM, llama.cpp, older Ollama) send reasoning whatever was asked."""
    for how in ({"X-Standin-Think": mode}, None):
        if how is None:
            standin.configure(think=mode)
        message = chat(standin, {"model": "deepseek-r1:7b", "messages": HELLO}, how).json()[
            "choices"][0]["message"]
        assert (message["content"], message.get("reasoning")) == (content, reasoning)


def test_1_reasoning_content_field_like_deepseek_and_old_vllm(standin):
    message = chat(standin, {"model": "deepseek-r1:7b", "messages": HELLO},
                   {"X-Standin-Think": "reasoning_content"}).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Echo: hello world",
                       "reasoning_content": REASONING}


def test_2_reasoning_only_deltas_carry_empty_content(standin):
    r = chat(standin, {"model": "qwen3", "messages": HELLO, "stream": True, "max_tokens": 3,
                       "stream_options": {"include_usage": True}})
    assert masked(r.content) == masked(
        frame('{"role":"assistant","content":"","reasoning":"Okay,"}')
        + frame('{"content":"","reasoning":" the"}')
        + frame('{"content":"","reasoning":" user"}')
        + frame("{}", '"length"') + usage_frame(6, 3) + DONE)


def test_2_answer_deltas_after_the_role_chunk(standin):
    r = chat(standin, {"model": "llama3.2", "messages": HELLO, "stream": True, "max_tokens": 2})
    assert masked(r.content) == masked(
        frame('{"role":"assistant","content":"Echo:"}', model="llama3.2")
        + frame('{"content":" hello"}', model="llama3.2")
        + frame("{}", '"length"', model="llama3.2") + DONE)


def test_nulls_shape_has_null_fields_before_and_after_values(standin):
    r = chat(standin, {"model": "qwen3", "messages": HELLO, "stream": True, "max_tokens": 3},
             {"X-Standin-Shape": "nulls", "X-Standin-Think": "reasoning_content"})
    assert masked(r.content) == masked(
        frame('{"role":"assistant","content":"","reasoning_content":null,"tool_calls":null}')
        + frame('{"content":null,"reasoning_content":"Okay,"}')
        + frame('{"content":null,"reasoning_content":" the"}')
        + frame('{"content":null,"reasoning_content":" user"}')
        + frame("{}", '"length"') + DONE)
    r = chat(standin, {"model": "qwen3", "messages": HELLO, "stream": True},
             {"X-Standin-Shape": "nulls"})
    deltas = [e["choices"][0]["delta"] for e in sse_events(r)[0]]
    assert {"content": "Echo:", "reasoning": None} in deltas


@pytest.mark.parametrize(("shape", "version"), [("new", b"0.33.0"), ("nulls", b"0.33.0"),
                                                ("legacy", b"0.32.5")])
def test_3_version_matches_the_shapes_served(standin, shape, version):
    r = requests.get(standin.url + "/api/version", headers={"X-Standin-Shape": shape})
    assert r.content == b'{"version":"%s"}' % version
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    standin.configure(shape=shape)
    assert requests.get(standin.url + "/api/version").content == b'{"version":"%s"}' % version


def test_3_legacy_shape_with_reasoning_as_v0_32_5_sends_it(standin):
    standin.configure(shape="legacy")
    r = chat(standin, {"model": "qwen3", "messages": HELLO, "stream": True, "max_tokens": 1})
    assert masked(r.content) == masked(
        frame('{"role":"assistant","content":"","reasoning":"Okay,"}')
        + frame('{"role":"assistant","content":""}', '"length"') + DONE)


EFFORTS = ('\\"minimal\\", \\"low\\", \\"medium\\", \\"high\\", \\"xhigh\\", \\"ultra\\", '
           '\\"max\\", or \\"none\\"')
LEVELS = '\\"high\\", \\"medium\\", \\"low\\", \\"max\\", true, or false'


@pytest.mark.parametrize(("body", "message"), [
    ({"reasoning_effort": "bogus"},
     f'invalid reasoning value: \\"bogus\\" (must be {EFFORTS})'),
    ({"reasoning_effort": "high", "reasoning": {"effort": "bogus"}},
     f'invalid reasoning value: \\"bogus\\" (must be {EFFORTS})'),
    ({"reasoning_effort": 1}, "json: cannot unmarshal number into Go struct field "
                              "ChatCompletionRequest.reasoning_effort of type string"),
])
def test_4_invalid_reasoning_effort(standin, body, message):
    r = chat(standin, {"model": "qwen3", "messages": HELLO, **body})
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.content == (b'{"error":{"message":"%s","type":"invalid_request_error",'
                         b'"param":null,"code":null}}' % message.encode())


@pytest.mark.parametrize(("think", "message"), [
    ("bogus", f'invalid think value: \\"bogus\\" (must be {LEVELS})'),
    ("", f'invalid think value: \\"\\" (must be {LEVELS})'),
    ("none", f'invalid think value: \\"none\\" (must be {LEVELS})'),
    (1, f"think must be a boolean or string ({LEVELS})"),
])
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_4_invalid_think(standin, path, think, message):
    r = requests.post(standin.url + path, json={
        "model": "qwen3", "messages": HELLO, "prompt": "hi", "think": think})
    assert (r.status_code, r.content) == (400, b'{"error":"%s"}' % message.encode())


def test_4_reasoning_effort_wins_and_maps_like_ollama(standin):
    def reasoning(**body):
        return chat(standin, {"model": "qwen3", "messages": HELLO, **body}).json()[
            "choices"][0]["message"].get("reasoning")

    assert reasoning(reasoning_effort="none", reasoning={"effort": "high"}) == REASONING
    assert reasoning(reasoning_effort="high", reasoning={"effort": "none"}) is None
    for effort in ("", "minimal", "low", "medium", "high", "max", "xhigh", "ultra"):
        assert reasoning(reasoning_effort=effort) == REASONING
    from bridge.ollama_standin import routes
    assert [routes._openai_think({"reasoning_effort": e}) for e in (
        "", "none", "minimal", "low", "medium", "high", "max", "xhigh", "ultra")] == [
        None, False, "low", "low", "medium", "high", "max", "max", "max"]


@pytest.mark.parametrize(("path", "content_type", "body"), [
    ("/v1/chat/completions", "application/json",
     b'{"error":{"message":"model is required","type":"invalid_request_error","param":null,'
     b'"code":null}}\n'),
    ("/api/chat", "application/json; charset=utf-8", b'{"error":"model is required"}'),
])
def test_4_empty_model_name(every_model, path, content_type, body):
    r = requests.post(every_model.url + path, json={"model": "", "messages": HELLO})
    assert (r.status_code, r.headers["Content-Type"], r.content) == (400, content_type, body)


def test_5_max_completion_tokens_is_ignored(standin):
    body = chat(standin, {"model": "llama3.2", "messages": HELLO,
                          "max_completion_tokens": 1}).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "Echo: hello world"
    body = chat(standin, {"model": "llama3.2", "messages": HELLO, "max_tokens": 1,
                          "max_completion_tokens": 100}).json()
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("shape", ["new", "legacy"])
def test_6_in_band_error_on_v1_ends_cleanly_without_done(standin, shape):
    standin.configure(shape=shape)
    standin.push_fault(Fault("inband", after_chunks=2))
    r = chat(standin, {"model": "llama3.2", "messages": HELLO, "stream": True})
    assert r.status_code == 200  # the body ends cleanly: no ChunkedEncodingError
    if shape == "new":
        want = (frame('{"role":"assistant","content":"Echo:"}', model="llama3.2")
                + frame('{"content":" hello"}', model="llama3.2")
                + frame('{"content":""}', model=""))
    else:
        want = (frame('{"role":"assistant","content":"Echo:"}', model="llama3.2")
                + frame('{"role":"assistant","content":" hello"}', model="llama3.2")
                + frame('{"role":"assistant","content":""}', model=""))
    assert masked(r.content) == masked(want)


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_6_in_band_error_on_api_is_a_last_error_line(standin, path):
    standin.push_fault(Fault("inband", after_chunks=1, body="out of memory"))
    r = requests.post(standin.url + path, json={"model": "llama3.2", "messages": HELLO,
                                                "prompt": "hello world"})
    lines = r.content.split(b"\n")
    assert r.status_code == 200 and len(lines) == 3 and lines[2] == b""
    assert b'"done":false' in lines[0] and lines[1] == b'{"error":"out of memory"}'


def test_6_in_band_fault_on_a_whole_body_is_a_500(standin):
    standin.push_fault(Fault("inband"), times=2)
    r = chat(standin, {"model": "llama3.2", "messages": HELLO})
    assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
    r = requests.post(standin.url + "/api/chat", json={"model": "llama3.2",
                                                       "messages": HELLO, "stream": False})
    assert (r.status_code, r.content) == (
        500, b'{"error":"llama runner process has terminated: exit status 2"}')


def completion_frame(text: str, finish: str = "null", model: str = "qwen3",
                     usage: str = '{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}'
                     ) -> bytes:
    """A /v1/completions chunk: `choices` before `model`, as Ollama's CompletionChunk."""
    return (b'data: {"id":"cmpl-1","object":"text_completion","created":1755000000,'
            b'"choices":[{"text":"%s","index":0,"finish_reason":%s}],"model":"%s",'
            b'"system_fingerprint":"fp_ollama","usage":%s}\n\n'
            % (text.encode(), finish.encode(), model.encode(), usage.encode()))


def test_7_completions_stream_while_thinking(standin):
    r = requests.post(standin.url + "/v1/completions", json={
        "model": "qwen3", "prompt": "hello world", "stream": True, "max_tokens": 2,
        "stream_options": {"include_usage": True}})
    usage = (b'data: {"id":"cmpl-1","object":"text_completion","created":1755000000,'
             b'"choices":[],"model":"qwen3","system_fingerprint":"fp_ollama","usage":'
             b'{"prompt_tokens":6,"completion_tokens":2,"total_tokens":8}}\n\n')
    assert masked(r.content) == masked(
        completion_frame("") + completion_frame("") + completion_frame("", '"length"')
        + usage + DONE)


def test_7_completions_created_varies_per_chunk(standin):
    r = requests.post(standin.url + "/v1/completions",
                      json={"model": "llama3.2", "prompt": "a b c", "stream": True},
                      headers={"X-Standin-Token-Delay": "0.4"})
    events, done = sse_events(r)
    assert done and len(events) == 5  # 4 chunks 0.4 s apart span more than a second
    assert len({e["created"] for e in events}) > 1 and len({e["id"] for e in events}) == 1
    assert all("usage" not in e for e in events)


def test_8_native_whole_bodies_have_no_trailing_newline(standin):
    r = requests.post(standin.url + "/api/chat",
                      json={"model": "llama3.2", "messages": HELLO, "stream": False})
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.content.endswith(b"}") and b"\n" not in r.content
    for path in ("/api/tags", "/api/ps", "/api/version"):
        assert not requests.get(standin.url + path).content.endswith(b"\n")
    r = requests.post(standin.url + "/api/chat", json={"model": "foo", "messages": HELLO})
    assert r.content == b'{"error":"model \'foo\' not found"}'


@pytest.mark.parametrize(("model", "capabilities"), [
    ("qwen3", ["completion", "tools", "thinking"]),
    ("deepseek-r1:7b", ["completion", "tools", "thinking"]),
    ("qwq", ["completion", "tools", "thinking"]),
    ("gpt-oss:20b", ["completion", "tools", "thinking"]),
    ("qwen3:4b-instruct-2507-q4_K_M", ["completion", "tools"]),
    ("qwen3-coder:30b", ["completion", "tools"]),
    ("llama3.2", ["completion", "tools"]),
    ("deepseek-coder", ["completion", "insert"]),
    ("all-minilm", ["embedding"]),
    ("some-finetune:3b", ["completion"]),
])
def test_9_show_capabilities_per_model(every_model, model, capabilities):
    r = requests.post(every_model.url + "/api/show", json={"model": model})
    show = r.json()
    assert show["capabilities"] == capabilities
    assert "license" not in show
    assert list(show) == ["modelfile", "parameters", "template", "details", "model_info",
                          "capabilities", "modified_at"]
    info = show["model_info"]
    arch = info["general.architecture"]
    assert list(info) == sorted(info)  # a Go map: keys sorted
    assert {f"{arch}.context_length", f"{arch}.embedding_length", f"{arch}.block_count",
            "general.parameter_count", "general.file_type"} <= info.keys()
    assert requests.post(every_model.url + "/api/show", json={"name": model}).json() == show


def test_10_strict_catalogue_404_and_any_catalogue(standin):
    assert chat(standin, {"model": "mistral-nemo", "messages": HELLO}).status_code == 404
    standin.configure(catalogue="any")
    assert message_of(standin, {"model": "mistral-nemo"}) == {
        "role": "assistant", "content": "Echo: hello world"}
    assert requests.post(standin.url + "/api/generate", json={
        "model": "Mistral-Nemo:12B", "prompt": "hi", "stream": False}).json()["response"] == \
        "Echo: hi"
    assert [m["id"] for m in requests.get(standin.url + "/v1/models").json()["data"]] == \
        standin.config.models  # the listing stays the configured one


# ---------------------------------------------------------------- an upstream with a key


@pytest.mark.parametrize("given", [None, "Bearer wrong", "Basic c2VjcmV0"])
def test_bearer_key_required(standin, given):
    standin.configure(api_key="sk-upstream")
    headers = {"Authorization": given} if given else {}
    r = chat(standin, {"model": "llama3.2", "messages": HELLO}, headers)
    message = ("Incorrect API key provided." if given else
               "You didn't provide an API key. You need to provide your API key in an "
               "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    assert (r.status_code, r.json()) == (401, {"error": {
        "message": message, "type": "invalid_request_error", "param": None,
        "code": "invalid_api_key"}})
    r = requests.post(standin.url + "/api/chat", json={"model": "llama3.2", "messages": HELLO},
                      headers=headers)
    assert (r.status_code, r.content) == (401, b'{"error":"unauthorized"}')
    ok = chat(standin, {"model": "llama3.2", "messages": HELLO},
              {"Authorization": "Bearer sk-upstream"})
    assert ok.status_code == 200


# ---------------------------------------------------------------- the bridge in front of it


def access_line(process, request_id: str) -> str:
    return wait_for(lambda: next((line for line in process.log().splitlines()
                                  if f"id={request_id}" in line), ""),
                    timeout=5, what=f"the access line of {request_id}")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
@pytest.mark.parametrize("which", ["bridge", "relay"])
def test_bridge_reports_an_in_band_error_as_truncated(request, standin, which, path):
    """Ollama's in-band failures end the body cleanly: the bridge still sees no [DONE] /
    done:true and logs the stream as truncated; on /v1 (where Ollama's error is lost) it
    adds its own in-band error, on /api the upstream's error line stays the only one."""
    process = request.getfixturevalue(which)
    standin.push_fault(Fault("inband", after_chunks=2, body="out of memory"))
    request_id = f"inband-{which}{path.replace('/', '-')}"
    r = requests.post(process.url + path, json={"model": "llama3.2", "messages": HELLO,
                                                "stream": True},
                      headers={"x-request-id": request_id}, timeout=30)
    assert r.status_code == 200
    if path.startswith("/v1"):
        events, done = sse_events(r)
        assert not done and events[-1]["error"]["code"] == "upstream_stream_truncated"
        # Ollama's empty `"model":""` chunk is relayed: the think filter passes what it
        # does not change once the stream is known to be plain.
        assert [e.get("model") for e in events[:-1]] == ["llama3.2", "llama3.2", ""]
    else:
        lines = [json.loads(line) for line in r.content.splitlines()]
        assert lines[-1] == {"error": "out of memory"}
        assert [line for line in lines if "error" in line] == [lines[-1]]
    assert "outcome=truncated" in access_line(process, request_id)
    assert standin.count(path) == 1


def test_bridge_with_the_default_thinking_shape(bridge, relay, standin):
    """deepseek-r1 as today's Ollama sends it (reasoning in `reasoning`): the bridge's
    defaults hand over the answer only, a relay passes the field on."""
    body = {"model": "deepseek-r1:7b", "messages": HELLO}
    filtered = requests.post(bridge.url + "/v1/chat/completions", json=body, timeout=30).json()
    assert filtered["choices"][0]["message"] == {"role": "assistant",
                                                 "content": "Echo: hello world"}
    relayed = requests.post(relay.url + "/v1/chat/completions", json=body, timeout=30).json()
    assert relayed["choices"][0]["message"]["reasoning"] == REASONING
    r = requests.post(bridge.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=30)
    events, done = sse_events(r)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert done and "".join(d.get("content") or "" for d in deltas) == "Echo: hello world"
    assert not any("reasoning" in d or "reasoning_content" in d for d in deltas)
    parts = [json.loads(line) for line in requests.post(
        bridge.url + "/api/chat", json=body, timeout=30).content.splitlines()]
    assert "".join(p["message"]["content"] for p in parts) == "Echo: hello world"
    assert not any("thinking" in p["message"] for p in parts)
