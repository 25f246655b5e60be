"""The Anthropic Messages API through a real gunicorn (2 gevent workers) in front of the
stand-in, with the official `anthropic` client: whole answers and streams, think tags
never in text blocks, thinking blocks when asked, cache hits across stream and whole
with fresh ids, and every refusal in Anthropic's error shape."""

from __future__ import annotations

import json
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor

import anthropic
import pytest
import requests
from helpers import (
    http_request,
    keys_command,
    metric_total,
    raw_http,
    show_upstream_is_open,
    wait_for,
)

from bridge.ollama_standin import Fault
from bridge.ollama_standin.wire import answer_text, reasoning_text
from bridge.serve.processes import start_bridge

MODEL = "deepseek-r1:7b"
TAGS = {"x-standin-think": "tags"}  # the stand-in writes <think>…</think> into the text
SYSTEM = [{"type": "text", "text": "You are a careful assistant. " * 40,
           "cache_control": {"type": "ephemeral"}}]


def question() -> str:
    return f"Why is the sky blue? ({uuid.uuid4().hex[:8]})"


def ask(q: str, **extra) -> dict:
    return {"model": MODEL, "max_tokens": 400, "system": SYSTEM,
            "messages": [{"role": "user", "content": q}], **extra}


def expected(q: str) -> str:
    return answer_text(q, 2)  # the system prompt and the question


def client(bridge, **kwargs) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", "sk-ant-test")
    return anthropic.Anthropic(base_url=bridge.url, max_retries=0, **kwargs)


def sse_events(response: requests.Response) -> list[tuple[str, dict]]:
    """(event name, data) of each event of an SSE answer."""
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def streamed_text(events: list[tuple[str, dict]]) -> str:
    return "".join(data["delta"]["text"] for name, data in events
                   if name == "content_block_delta" and data["delta"]["type"] == "text_delta")


def post(bridge, body: dict, headers: dict | None = None, **kwargs) -> requests.Response:
    return requests.post(bridge.url + "/v1/messages?beta=true", json=body, timeout=30,
                         headers={"anthropic-version": "2023-06-01", **(headers or {})},
                         **kwargs)


@pytest.fixture(scope="module")
def cached(standin_server, tmp_path_factory):
    with start_bridge("--enable-cache", "--cache-dir", str(tmp_path_factory.mktemp("cache")),
                      upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        show_upstream_is_open(process, MODEL)
        yield process


def test_create_answers_the_text_without_think_tags(cached, standin):
    q = question()
    raw = client(cached).messages.with_raw_response.create(**ask(q), extra_headers=TAGS)
    message = raw.parse()
    assert raw.headers["x-cache"] == "MISS"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == expected(q)
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert message.model == MODEL and message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0
    sent = standin.requests[-1]
    assert sent.path == "/api/chat"  # the native wire, as Ollama's middleware makes it
    native = sent.json()
    assert native["messages"][0] == {"role": "system", "content": SYSTEM[0]["text"]}
    assert native["options"] == {"num_predict": 400}


def test_stream_gives_anthropics_events_and_the_same_text(cached, standin):
    q = question()
    with client(cached).messages.stream(**ask(q), extra_headers=TAGS) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.content[0].text == expected(q) and "<think>" not in final.content[0].text
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop",
            "message_delta"} <= set(kinds)
    assert final.stop_reason == "end_turn" and final.id.startswith("msg_")


def test_a_stream_and_a_whole_request_hit_each_others_entry_with_fresh_ids(cached, standin):
    q = question()
    sdk = client(cached)
    first = sdk.messages.create(**ask(q), extra_headers=TAGS)
    calls = standin.count("/api/chat")
    answer = post(cached, ask(q, stream=True), TAGS)
    assert answer.headers["x-cache"].startswith("HIT")
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = sse_events(answer)
    assert streamed_text(events) == first.content[0].text == expected(q)
    assert events[0][1]["message"]["id"] not in (first.id,)
    again = [sdk.messages.with_raw_response.create(**ask(q), extra_headers=TAGS)
             for _ in range(3)]  # the repeats may be answered before Flask (fast hits)
    assert all(raw.headers["x-cache"].startswith("HIT") for raw in again)
    ids = {first.id, events[0][1]["message"]["id"], *(raw.parse().id for raw in again)}
    assert len(ids) == 5 and all(ident.startswith("msg_") for ident in ids)
    assert {raw.parse().content[0].text for raw in again} == {expected(q)}
    with sdk.messages.stream(**ask(q), extra_headers=TAGS) as stream:
        assert stream.get_final_message().content[0].text == expected(q)
    streams = [sse_events(post(cached, ask(q, stream=True), TAGS)) for _ in range(3)]
    assert len({events[0][1]["message"]["id"] for events in streams} | ids) == 8
    assert {streamed_text(events) for events in streams} == {expected(q)}
    assert standin.count("/api/chat") == calls  # no upstream call for any of them


def test_thinking_is_left_out_unless_the_request_enables_it(cached, standin):
    q = question()
    sdk = client(cached)
    message = sdk.messages.create(**ask(q))  # silent: reasoning in Ollama's field, removed
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == expected(q)
    assert "think" not in standin.requests[-1].json()
    off = sdk.messages.create(**ask(q, thinking={"type": "disabled"}), extra_headers=TAGS)
    assert [block.type for block in off.content] == ["text"]
    assert off.content[0].text == expected(q)  # the tags the model wrote, taken out
    assert standin.requests[-1].json()["think"] is False


@pytest.mark.parametrize("stream_first", [False, True])
def test_thinking_enabled_gives_a_thinking_block_then_the_text(cached, standin,
                                                               stream_first):
    q = question()
    sdk = client(cached)
    thinking = {"type": "enabled", "budget_tokens": 1024}

    def whole():
        return sdk.messages.create(**ask(q, thinking=thinking))

    def streamed():
        with sdk.messages.stream(**ask(q, thinking=thinking)) as stream:
            kinds = {event.delta.type for event in stream if event.type == "content_block_delta"}
            return stream.get_final_message(), kinds

    first, kinds = streamed() if stream_first else (whole(), None)
    assert standin.requests[-1].json()["think"] is True
    calls = standin.count("/api/chat")
    second = whole() if stream_first else streamed()[0]  # a cache hit the other way
    assert standin.count("/api/chat") == calls
    for message in (first, second):
        assert [block.type for block in message.content] == ["thinking", "text"]
        assert message.content[0].thinking == reasoning_text(q)
        assert message.content[1].text == expected(q)
    if kinds is not None:
        assert kinds == {"thinking_delta", "text_delta"}


def test_bad_requests_are_refused_in_anthropics_shape(cached, standin):
    sdk = client(cached)
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.create(model=MODEL, max_tokens=0, messages=[{"role": "user",
                                                                  "content": "hi"}])
    assert refused.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens is required and must be positive"}
    for body in (b"{not json", b"[]", json.dumps({**ask("x"), "system": 7}).encode()):
        answer = requests.post(cached.url + "/v1/messages", data=body, timeout=30)
        assert answer.status_code == 400, body
        assert answer.json()["type"] == "error"
        assert answer.json()["error"]["type"] == "invalid_request_error"
    wrong = requests.get(cached.url + "/v1/messages", timeout=30)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(model="no-such-model", max_tokens=10,
                            messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in missing.value.body["error"]["message"]


def test_a_stream_failing_midway_ends_with_an_error_event(cached, standin):
    standin.push_fault(Fault("inband", after_chunks=3, path="/api/chat"))
    answer = post(cached, ask(question(), stream=True, model="qwen2.5"))  # no reasoning
    events = sse_events(answer)
    assert answer.status_code == 200 and events[0][0] == "message_start"
    assert streamed_text(events)  # the answer had started
    assert events[-1][0] == "error"
    assert events[-1][1]["type"] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"
    assert events[-1][1]["error"]["message"]


def test_limits_of_the_bridge_answer_in_anthropics_shape(make_bridge, standin):
    small = make_bridge("--max-body-size", "4096", workers=1)
    too_big = post(small, ask("x" * 8000))
    assert too_big.status_code == 413
    assert too_big.json()["error"]["type"] == "request_too_large"
    limited = make_bridge("-r", "1", workers=1)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: post(limited, ask(question())), range(12)))
    refused = [answer for answer in answers if answer.status_code == 429]
    assert refused and all(answer.json() == {"type": "error", "error": {
        "type": "rate_limit_error", "message": answer.json()["error"]["message"]}}
        for answer in refused)
    assert int(refused[0].headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError):
        for _ in range(3):
            client(limited).messages.create(**ask(question()))


def test_admission_refusal_is_an_overloaded_error(make_bridge, standin):
    busy = make_bridge("--max-concurrency", "1", "--max-queue", "0", workers=1)
    slow = {"x-standin-token-delay": "5"}  # a stream that holds the only slot a while
    held = post(busy, ask(question(), stream=True, model="qwen2.5"), slow, stream=True)
    try:
        assert held.status_code == 200
        refused = post(busy, ask(question()))
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "overloaded_error"
    finally:
        held.close()


@pytest.fixture(scope="module")
def shared(standin_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("shared")
    key_file = home / "upstream.key"
    upstream_key = "sk-upstream-" + secrets.token_hex(16)
    key_file.write_text(upstream_key + "\n")
    state_dir = home / "state"
    keys = {}
    for name, flags in (("dev", ()), ("coder", ("--models", "qwen2.5"))):
        done = keys_command(state_dir, "create", name, *flags)
        assert done.returncode == 0, done.stderr
        keys[name] = done.stdout.strip()
    with start_bridge("--enable-shared-mode", "--api-key-file", str(key_file),
                      "--state-dir", str(state_dir), "--enable-cache", "--cache-dir",
                      str(home / "cache"), upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process, keys, upstream_key


def test_shared_mode_takes_the_client_key_as_x_api_key_or_bearer(shared, standin):
    process, keys, upstream_key = shared
    q = question()
    message = client(process, api_key=keys["dev"]).messages.create(**ask(q), extra_headers=TAGS)
    assert message.content[0].text == expected(q)
    sent = {name.lower(): value for name, value in standin.requests[-1].headers.items()}
    assert sent["authorization"] == f"Bearer {upstream_key}" and "x-api-key" not in sent
    calls = standin.count("/api/chat")
    as_bearer = anthropic.Anthropic(base_url=process.url, auth_token=keys["dev"],
                                    max_retries=0)  # how Claude Code sends it
    assert as_bearer.messages.create(**ask(q), extra_headers=TAGS).content[0].text == expected(q)
    assert standin.count("/api/chat") == calls  # the same key's cache
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client(process, api_key="sk-bridge-not-a-key").messages.create(**ask(q))
    assert refused.value.body["error"]["type"] == "authentication_error"
    assert "www-authenticate" in refused.value.response.headers
    with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
        client(process, api_key=keys["coder"]).messages.create(**ask(q))
    assert forbidden.value.body["error"]["type"] == "permission_error"
    assert keys["dev"] not in process.log()


WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


def test_tool_use_then_a_tool_result_turn(cached, standin):
    q = question()
    sdk = client(cached)
    turn = {"model": "qwen2.5", "max_tokens": 200, "tools": [WEATHER],
            "messages": [{"role": "user", "content": q}]}
    first = sdk.messages.create(**turn)
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": q}
    native = standin.requests[-1].json()
    assert native["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    calls = standin.count("/api/chat")
    with sdk.messages.stream(**turn) as stream:  # the same call, from the cache, streamed
        kinds = [event.type for event in stream]
        replayed = stream.get_final_message()
    assert standin.count("/api/chat") == calls and "input_json" in kinds
    assert [(block.type, block.name, block.input) for block in replayed.content
            if block.type == "tool_use"] == [("tool_use", "get_weather", {"city": q})]
    assert replayed.stop_reason == "tool_use"
    follow = sdk.messages.create(**{**turn, "messages": [
        *turn["messages"], {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "Sunny, 22°C"}]}]})
    assert [block.type for block in follow.content] == ["text"]
    assert follow.content[0].text == answer_text(q, 3) and follow.stop_reason == "end_turn"
    sent = standin.requests[-1].json()["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "content": "Sunny, 22°C", "tool_call_id": call.id}


REFUSING_SCRIPT = """
function HandleServerRequest(request)
    if request.body:find("forbidden topic", 1, true) then
        return false, {status_code = 403, headers = {["content-type"] = "application/json"},
                       body = '{"error": "that topic is not allowed here"}'}
    end
    return true, request
end
function HandleServerResponse(response) return response end
"""


def test_lua_refusals_and_slow_bodies_answer_in_anthropics_shape(make_bridge, standin,
                                                                tmp_path):
    script = tmp_path / "refuse.lua"
    script.write_text(REFUSING_SCRIPT)
    guarded = make_bridge("--enable-luajit", "--luajit-script", str(script),
                          "--body-read-timeout", "1000", workers=1)
    refused = post(guarded, ask("a forbidden topic"))
    assert refused.status_code == 403 and refused.json() == {"type": "error", "error": {
        "type": "permission_error", "message": "that topic is not allowed here"}}
    assert post(guarded, ask(question())).status_code == 200
    slow = http_request("/v1/messages", b'{"model":"qwen2.5",', close=False)[:-19] \
        .replace(b"Content-Length: 19", b"Content-Length: 500")
    status, body = raw_http(guarded.url, slow, timeout=30)
    assert status == 408
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert "--body-read-timeout" in json.loads(body)["error"]["message"]


def test_metrics_the_access_log_and_the_console_name_the_api(make_bridge, standin):
    plain = make_bridge(workers=1)
    assert post(plain, ask(question(), stream=True)).status_code == 200
    assert post(plain, {"model": MODEL}).status_code == 400

    def counted() -> dict | None:  # each request is counted once its answer is sent
        found = requests.get(plain.url + "/status", timeout=10).json()
        return found if found["requests"]["anthropic"]["total"] == 2 else None

    status = wait_for(counted, what="both requests counted")
    assert status["requests"]["anthropic"]["errors"] == 1
    assert status["requests"]["anthropic"]["ttft_p50"] is not None  # the stream's
    assert status["requests"]["ollama"]["total"] == 0  # the native wire is not the API
    assert metric_total(plain.url, "bridge_requests_total", route="/v1/messages") == 2
    assert metric_total(plain.url, "bridge_upstream_time_to_first_token_seconds_count",
                        surface="anthropic") == 1
    lines = [line for line in plain.log().splitlines() if '"POST /v1/messages"' in line]
    assert len(lines) == 2 and all("api=anthropic" in line for line in lines)


def test_a_model_that_cannot_think_answers_without_thinking(make_bridge, standin):
    """As Ollama relaxes it on this API: Claude Code asks every model for an effort."""
    single = make_bridge(workers=1)
    sdk = client(single)
    for asked in ({"thinking": {"type": "enabled", "budget_tokens": 1024}},
                  {"extra_body": {"output_config": {"effort": "high"}}}):
        q = question()
        message = sdk.messages.create(model="qwen2.5", max_tokens=100,
                                      messages=[{"role": "user", "content": q}], **asked)
        assert [block.type for block in message.content] == ["text"]
        assert message.content[0].text == answer_text(q, 1)
    sent = [request.json() for request in standin.requests if request.path == "/api/chat"]
    # refused once with `think`, then asked without it, and from then on at once
    assert [request.get("think") for request in sent] == [True, None, None]
