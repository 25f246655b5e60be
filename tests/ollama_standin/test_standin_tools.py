"""Tool calls on the stand-in, in both of Ollama's shapes (sections 1, 4 and 8 of
shared/reference/ollama-wire-format.md): native `message.tool_calls` with the index
inside `function` and arguments an object; /v1 `tool_calls` with `id`, `index`,
`type:"function"` and arguments a JSON string, `finish_reason:"tool_calls"`; whole and
streamed, checked byte for byte and through the official clients."""

from __future__ import annotations

import json

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

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "city": {"type": "string"}}}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {}}}}
PARIS = [{"role": "user", "content": "Paris"}]
V1_CALL = ('{"id":"call_k3j9x0ab","index":0,"type":"function","function":'
           '{"name":"get_weather","arguments":"{\\"city\\":\\"Paris\\"}"}}')
NATIVE_CALL = ('{"id":"call_k3j9x0ab","function":{"index":0,"name":"get_weather",'
               '"arguments":{"city":"Paris"}}}')


def test_v1_whole_body_bytes(standin):
    r = chat(standin, {"model": "llama3.2", "messages": PARIS, "tools": [WEATHER]})
    assert (r.status_code, r.headers["Content-Type"]) == (200, "application/json")
    assert masked(r.content) == masked(
        b'{"id":"chatcmpl-512","object":"chat.completion","created":1755000000,'
        b'"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"","tool_calls":[%s]},'
        b'"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":5,'
        b'"total_tokens":10}}\n' % V1_CALL.encode())


@pytest.mark.parametrize("shape", ["new", "legacy"])
def test_v1_stream_bytes(standin, shape):
    standin.configure(shape=shape)
    r = chat(standin, {"model": "llama3.2", "messages": PARIS, "tools": [WEATHER],
                       "stream": True})
    if shape == "new":  # the call whole in the role delta; the finish on its own
        want = (frame('{"role":"assistant","content":"","tool_calls":[%s]}' % V1_CALL,
                      model="llama3.2")
                + frame("{}", '"tool_calls"', model="llama3.2"))
    else:  # v0.32.5: role on every delta, the finish on a last one
        want = (frame('{"role":"assistant","content":"","tool_calls":[%s]}' % V1_CALL,
                      model="llama3.2")
                + frame('{"role":"assistant","content":""}', '"tool_calls"',
                        model="llama3.2"))
    assert masked(r.content) == masked(want + DONE)


def test_v1_thinking_model_reasons_then_calls(standin):
    events, done = sse_events(chat(standin, {"model": "qwen3", "messages": HELLO,
                                             "tools": [WEATHER], "stream": True}))
    deltas = [e["choices"][0]["delta"] for e in events]
    assert done and "".join(d.get("reasoning", "") for d in deltas) == REASONING
    call_delta = deltas[-2]
    assert call_delta["content"] == "" and "role" not in call_delta
    assert call_delta["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city":"hello world"}'}
    assert events[-1]["choices"][0] == {"index": 0, "delta": {},
                                        "finish_reason": "tool_calls"}


def test_native_whole_and_stream_bytes(standin):
    body = {"model": "llama3.2", "messages": PARIS, "tools": [WEATHER]}
    whole = requests.post(standin.url + "/api/chat", json={**body, "stream": False})
    assert whole.headers["Content-Type"] == "application/json; charset=utf-8"
    assert masked(whole.content) == (
        b'{"model":"llama3.2","created_at":"T","message":{"role":"assistant","content":"",'
        b'"tool_calls":[%s]},"done":true,"done_reason":"stop",%s}'
        % (masked(NATIVE_CALL.encode()), native_metrics(5, 5)))
    stream = requests.post(standin.url + "/api/chat", json=body)
    assert stream.headers["Content-Type"] == "application/x-ndjson"
    assert masked(stream.content) == masked(
        native_line('{"role":"assistant","content":"","tool_calls":[%s]}' % NATIVE_CALL)
        + native_line('{"role":"assistant","content":""}', "true",
                      extra=',"done_reason":"stop",' + native_metrics(5, 5).decode()))


def test_ids_are_fresh_like_ollamas(standin):
    ids = {chat(standin, {"model": "llama3.2", "messages": PARIS, "tools": [WEATHER]}).json()[
        "choices"][0]["message"]["tool_calls"][0]["id"] for _ in range(5)}
    assert len(ids) > 1


@pytest.mark.parametrize(("tools", "messages", "arguments"), [
    ([WEATHER, CLOCK], PARIS, {"city": "Paris"}),  # the first tool, its required parameter
    ([CLOCK, WEATHER], PARIS, {}),  # no parameters
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
       "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}}}],
     [{"role": "user", "content": "a b c"}], {"n": 3}),  # the first declared, typed
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
       "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}}}}], PARIS,
     {"unit": "c"}),
])
def test_the_first_tool_is_called_with_arguments_from_the_prompt(standin, tools, messages,
                                                                   arguments):
    r = requests.post(standin.url + "/api/chat", json={
        "model": "qwen2.5", "messages": messages, "tools": tools, "stream": False})
    call = r.json()["message"]["tool_calls"][0]["function"]
    assert call == {"index": 0, "name": tools[0]["function"]["name"], "arguments": arguments}


def test_after_a_tool_result_the_answer_is_text(standin):
    messages = [*PARIS, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    body = chat(standin, {"model": "llama3.2", "messages": messages,
                          "tools": [WEATHER]}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "Echo (3 messages): Paris"}


def test_without_tools_nothing_changes(standin):
    body = {"model": "llama3.2", "messages": PARIS, "stream": True}
    assert masked(chat(standin, {**body, "tools": []}).content) == masked(
        chat(standin, body).content)


def test_a_call_that_does_not_fit_max_tokens_is_not_made(standin):
    choice = chat(standin, {"model": "llama3.2", "messages": PARIS, "tools": [WEATHER],
                            "max_tokens": 3}).json()["choices"][0]
    assert choice == {"index": 0, "message": {"role": "assistant", "content": ""},
                      "finish_reason": "length"}


@pytest.mark.parametrize(("path", "content_type", "body"), [
    ("/api/chat", "application/json; charset=utf-8",
     b'{"error":"registry.ollama.ai/library/deepseek-coder:latest does not support tools"}'),
    ("/v1/chat/completions", "application/json",
     b'{"error":{"message":"registry.ollama.ai/library/deepseek-coder:latest does not '
     b'support tools","type":"invalid_request_error","param":null,"code":null}}\n'),
])
def test_tools_to_a_model_without_the_capability(standin, path, content_type, body):
    r = requests.post(standin.url + path, json={"model": "deepseek-coder", "messages": PARIS,
                                                "tools": [WEATHER]})
    assert (r.status_code, r.headers["Content-Type"], r.content) == (400, content_type, body)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_parses_the_calls(standin, stream):
    completion = openai_completion(standin, stream, model="qwen3", messages=PARIS,
                                   tools=[WEATHER])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_client_parses_the_calls(standin, stream):
    client = ollama.Client(host=standin.url)
    parts = client.chat(model="llama3.2", messages=PARIS, tools=[WEATHER], stream=stream)
    calls = [c for part in (parts if stream else [parts]) for c in part.message.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
