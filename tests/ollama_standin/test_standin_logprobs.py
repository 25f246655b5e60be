"""Logprobs on the stand-in as Ollama sends them (section 8 of
shared/reference/ollama-wire-format.md, `api.Logprob`, `openai.ChoiceLogprobs`): one
entry per token with `token`, `logprob`, `bytes` and `top_logprobs`, on the token's own
chunk or all together in a whole body, reasoning tokens included; /v1/completions
answers without them; `top_logprobs` over 20 is Ollama's 400 on every surface."""

from __future__ import annotations

import json
import re

import ollama
import pytest
import requests
from standin_bytes import (
    DONE,
    HELLO,
    REASONING,
    chat,
    frame,
    masked,
    native_line,
    native_metrics,
    openai_completion,
    sse_events,
)

_LOGPROB = re.compile(rb'"logprob":-\d+\.\d+')
HELLO_TOKENS = ["Echo:", " hello", " world"]


def values_masked(raw: bytes) -> bytes:
    """Per-call values and the logprob numbers masked (their values are checked apart)."""
    return _LOGPROB.sub(b'"logprob":L', masked(raw))


def go(text: str) -> str:
    """A JSON string as Go writes it: HTML characters escaped."""
    return json.dumps(text).replace("<", "\\u003c").replace(">", "\\u003e")


def entry(token: str, top: list[str] | None = None) -> str:
    """A logprobs entry as Go marshals `api.Logprob`, the number masked."""
    def one(text: str) -> str:
        return (f'{{"token":{go(text)},"logprob":L,"bytes":'
                f'{json.dumps(list(text.encode()), separators=(",", ":"))}')

    alternatives = ',"top_logprobs":[' + ",".join(one(t) + "}" for t in top) + "]" \
        if top else ""
    return one(token) + alternatives + "}"


def assert_plausible(entries: list[dict], top: int) -> None:
    """Log probabilities below 0; the chosen token first among the alternatives, which
    come likeliest first; `bytes` the token's UTF-8."""
    for item in entries:
        assert item["logprob"] < 0 and item["bytes"] == list(item["token"].encode())
        alternatives = item.get("top_logprobs", [])
        assert len(alternatives) == top
        if top:
            assert alternatives[0] == {k: item[k] for k in ("token", "logprob", "bytes")}
            values = [a["logprob"] for a in alternatives]
            assert values == sorted(values, reverse=True)
            assert len({a["token"] for a in alternatives}) == top


def test_v1_whole_body_bytes(standin):
    r = chat(standin, {"model": "llama3.2", "messages": HELLO, "logprobs": True,
                       "top_logprobs": 2})
    entries = ",".join(entry(t, [t, " the"]) for t in HELLO_TOKENS)
    assert values_masked(r.content) == masked(
        b'{"id":"chatcmpl-512","object":"chat.completion","created":1755000000,'
        b'"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"Echo: hello world"},'
        b'"finish_reason":"stop","logprobs":{"content":[%s]}}],"usage":{"prompt_tokens":6,'
        b'"completion_tokens":3,"total_tokens":9}}\n' % entries.encode())
    assert_plausible(r.json()["choices"][0]["logprobs"]["content"], 2)


@pytest.mark.parametrize("shape", ["new", "legacy"])
def test_v1_stream_bytes_one_entry_per_chunk(standin, shape):
    standin.configure(shape=shape)
    r = chat(standin, {"model": "llama3.2", "messages": HELLO, "logprobs": True,
                       "stream": True})
    role = '"role":"assistant",' if shape == "legacy" else ""
    want = frame('{"role":"assistant","content":"Echo:"}', model="llama3.2",
                 extra=',"logprobs":{"content":[%s]}' % entry("Echo:"))
    for token in HELLO_TOKENS[1:]:
        want += frame('{%s"content":%s}' % (role, json.dumps(token)), model="llama3.2",
                      extra=',"logprobs":{"content":[%s]}' % entry(token))
    want += (frame("{}", '"stop"', model="llama3.2") if shape == "new" else
             frame('{"role":"assistant","content":""}', '"stop"', model="llama3.2"))
    assert values_masked(r.content) == masked(want + DONE)


@pytest.mark.parametrize("stream", [False, True])
def test_v1_reasoning_tokens_have_logprobs_and_join_to_the_text(standin, stream):
    r = chat(standin, {"model": "qwen3", "messages": HELLO, "logprobs": True,
                       "stream": stream})
    if stream:
        events, _ = sse_events(r)
        choices = [e["choices"][0] for e in events]
        entries = [e for c in choices for e in (c.get("logprobs") or {}).get("content", [])]
        text = "".join(c["delta"].get("reasoning", "") + c["delta"].get("content", "")
                       for c in choices)
        assert all(len(c["logprobs"]["content"]) == 1 for c in choices if c["delta"])
    else:
        choice = r.json()["choices"][0]
        entries = choice["logprobs"]["content"]
        text = choice["message"]["reasoning"] + choice["message"]["content"]
    assert text == REASONING + "Echo: hello world"
    assert "".join(e["token"] for e in entries) == text
    assert_plausible(entries, 0)


@pytest.mark.parametrize("think", [False, True])
def test_native_chat_whole_and_stream_bytes(standin, think):
    body = {"model": "qwen3", "messages": HELLO, "logprobs": True, "think": think,
            "options": {"num_predict": 2}}
    whole = requests.post(standin.url + "/api/chat", json={**body, "stream": False})
    stream = requests.post(standin.url + "/api/chat", json=body)
    tokens = ["<th", "ink>\n", "Okay,", " the"] if not think else ["Okay,", " the"]
    field = "thinking" if think else "content"
    text = go("".join(tokens))
    message = ('{"role":"assistant","content":"","thinking":%s}' % text if think
               else '{"role":"assistant","content":%s}' % text)
    assert values_masked(whole.content) == (
        b'{"model":"qwen3","created_at":"T","message":%s,"done":true,"done_reason":"length",'
        b'"logprobs":[%s],%s}' % (message.encode(), ",".join(map(entry, tokens)).encode(),
                                  native_metrics(6, 2)))
    want = b"".join(native_line(
        '{"role":"assistant","content":%s}' % go(t) if not think else
        '{"role":"assistant","content":"","thinking":%s}' % go(t),
        model="qwen3", extra=',"logprobs":[%s]' % entry(t)) for t in tokens)
    want += native_line('{"role":"assistant","content":""}', "true", model="qwen3",
                        extra=',"done_reason":"length",' + native_metrics(6, 2).decode())
    assert values_masked(stream.content) == want
    assert "".join(e["token"] for e in whole.json()["logprobs"]) == \
        whole.json()["message"][field]


def test_native_generate_logprobs_come_last(standin):
    body = {"model": "llama3.2", "prompt": "hello world", "logprobs": True,
            "top_logprobs": 1}
    whole = requests.post(standin.url + "/api/generate", json={**body, "stream": False})
    raw = values_masked(whole.content)
    assert raw.startswith(b'{"model":"llama3.2","created_at":"T","response":"Echo: hello '
                          b'world","done":true,"done_reason":"stop","context":[')
    assert raw.endswith(b'%s,"logprobs":[%s]}' % (native_metrics(6, 3), ",".join(
        entry(t, [t]) for t in HELLO_TOKENS).encode()))
    lines = values_masked(requests.post(standin.url + "/api/generate", json=body).content)
    assert lines.split(b"\n")[0] == (
        b'{"model":"llama3.2","created_at":"T","response":"Echo:","done":false,'
        b'"logprobs":[%s]}' % entry("Echo:", ["Echo:"]).encode())
    assert b"logprobs" not in lines.split(b"\n")[-2]  # the last line: metrics only


@pytest.mark.parametrize("stream", [False, True])
def test_v1_completions_answer_without_logprobs(standin, stream):
    r = requests.post(standin.url + "/v1/completions", json={
        "model": "llama3.2", "prompt": "hello world", "logprobs": 5, "stream": stream})
    assert r.status_code == 200 and b"Echo:" in r.content and b"logprobs" not in r.content


def test_no_logprobs_asked_none_sent(standin):
    for path in ("/api/chat", "/api/generate", "/v1/chat/completions"):
        r = requests.post(standin.url + path, json={
            "model": "qwen3", "messages": HELLO, "prompt": "hello world", "top_logprobs": 5})
        assert r.status_code == 200 and b"logprob" not in r.content


def test_twenty_alternatives_at_most(standin):
    r = requests.post(standin.url + "/api/chat", json={
        "model": "llama3.2", "messages": HELLO, "stream": False, "logprobs": True,
        "top_logprobs": 20})
    assert_plausible(r.json()["logprobs"], 20)


@pytest.mark.parametrize(("path", "body", "content_type", "want"), [
    ("/api/chat", {"top_logprobs": 21}, "application/json; charset=utf-8",
     b'{"error":"top_logprobs must be between 0 and 20"}'),
    ("/api/generate", {"top_logprobs": -1}, "application/json; charset=utf-8",
     b'{"error":"top_logprobs must be between 0 and 20"}'),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "application/json",
     b'{"error":{"message":"top_logprobs must be between 0 and 20","type":'
     b'"invalid_request_error","param":null,"code":null}}\n'),
    ("/v1/completions", {"logprobs": 21}, "application/json",
     b'{"error":{"message":"top_logprobs must be between 0 and 20","type":'
     b'"invalid_request_error","param":null,"code":null}}\n'),
])
def test_top_logprobs_over_20_is_a_400(standin, path, body, content_type, want):
    r = requests.post(standin.url + path, json={
        "model": "nobody-has-it", "messages": HELLO, "prompt": "hi", **body})
    assert (r.status_code, r.headers["Content-Type"], r.content) == (400, content_type, want)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_reads_them(standin, stream):
    completion = openai_completion(standin, stream, model="llama3.2", messages=HELLO,
                                   logprobs=True, top_logprobs=3)
    content = completion.choices[0].logprobs.content
    assert [c.token for c in content] == HELLO_TOKENS
    assert all(len(c.top_logprobs) == 3 and c.top_logprobs[0].token == c.token
               for c in content)


def test_ollama_client_reads_them(standin):
    client = ollama.Client(host=standin.url)
    response = client.chat(model="llama3.2", messages=HELLO, logprobs=True, top_logprobs=2)
    assert [e.token for e in response.logprobs] == HELLO_TOKENS
    assert all(len(e.top_logprobs) == 2 for e in response.logprobs)
    parts = list(client.generate(model="llama3.2", prompt="hello world", logprobs=True,
                                 stream=True))
    assert [e.token for p in parts for e in p.logprobs or []] == HELLO_TOKENS
