"""The OpenAI Responses API (`POST /v1/responses`) through a real gunicorn bridge, with the
official `openai` SDK against the stand-in: whole and streamed answers, tools, the
cache (stream ↔ whole hits with fresh ids), `previous_response_id` kept by the bridge,
shared mode, the rate limit and broken streams, each in the Responses shapes."""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import dataclass
from typing import Iterator

import openai
import pytest
import requests
from helpers import http_request, keys_command, show_upstream_is_open, wait_for

from bridge.ollama_standin import Fault, StandIn
from bridge.serve.processes import Process, start_bridge

MODEL = "qwen3"
TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}


def sdk(base: str, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)


def question() -> str:
    return f"Why is the sky blue? ({secrets.token_hex(4)})"  # never asked before: a miss


def streamed(client: openai.OpenAI, **request) -> tuple[list, object]:
    """(the events of a streamed answer, the response the last one carries)."""
    events = list(client.responses.create(stream=True, **request))
    return events, events[-1].response


def chat_calls(standin: StandIn) -> list[dict]:
    return [request.json() for request in standin.requests if request.path == "/api/chat"]


@pytest.fixture(scope="module")
def cached(standin_server, tmp_path_factory) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("responses")
    with start_bridge("--enable-cache", "--cache-dir", str(home / "cache"), "--state-dir",
                      str(home / "state"), upstream=standin_server.url, workers=2,
                      log_dir=home) as process:
        yield process


@pytest.fixture
def client(cached, standin) -> openai.OpenAI:
    return sdk(cached.url)


# ------------------------------------------------------------------ answers


def test_a_whole_answer_is_the_stand_ins_own(client, standin):
    ask = question()
    got = client.responses.create(model=MODEL, input=ask, instructions="Answer briefly.")
    want = sdk(standin.url).responses.create(model=MODEL, input=ask,
                                             instructions="Answer briefly.")
    assert got.output_text and got.output_text == want.output_text
    assert got.id.startswith("resp_") and got.status == "completed"
    assert got.output[0].type == "message" and got.output[0].id.startswith("msg_")
    assert got.usage.output_tokens == want.usage.output_tokens > 0
    assert got.instructions == "Answer briefly." and got.model == MODEL
    # what went upstream: Ollama's native chat, as Ollama's middleware makes it
    [native] = [call for call in chat_calls(standin)]
    assert native["messages"] == [{"role": "system", "content": "Answer briefly."},
                                  {"role": "user", "content": ask}]


def test_a_stream_ends_with_response_completed(client, standin):
    ask = question()
    events, final = streamed(client, model=MODEL, input=ask)
    kinds = [event.type for event in events]
    assert kinds[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text and final.output_text == text and final.status == "completed"
    assert final.id == events[0].response.id


def test_the_stream_helper_gives_the_final_response(client, standin):
    ask = question()
    with client.responses.stream(model=MODEL, input=ask) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and final.output_text


def test_stream_and_whole_answer_each_other_from_the_cache_with_fresh_ids(client, standin):
    ask = question()
    first = client.responses.with_raw_response.create(model=MODEL, input=ask)
    assert first.headers["x-cache"] == "MISS"
    whole = first.parse()
    calls = standin.count("/api/chat")
    assert calls == 1
    events, final = streamed(client, model=MODEL, input=ask)  # a hit, streamed
    again = client.responses.with_raw_response.create(model=MODEL, input=ask)
    assert again.headers["x-cache"].startswith("HIT")
    repeat = again.parse()
    assert standin.count("/api/chat") == calls  # no upstream call for either
    assert final.output_text == whole.output_text == repeat.output_text
    ids = {whole.id, final.id, repeat.id}
    assert len(ids) == 3 and all(ident.startswith("resp_") for ident in ids)
    assert len({whole.output[0].id, final.output[0].id, repeat.output[0].id}) == 3
    # and the other way round: a stream first, then the whole answer from it
    ask = question()
    streamed(client, model=MODEL, input=ask)
    whole = client.responses.with_raw_response.create(model=MODEL, input=ask)
    assert whole.headers["x-cache"].startswith("HIT")
    assert standin.count("/api/chat") == calls + 1


def test_reasoning_items_only_when_the_request_asks(client, standin):
    standin.configure(think="field")
    ask = question()
    asked = client.responses.create(model=MODEL, input=ask, reasoning={"effort": "high"})
    assert [item.type for item in asked.output] == ["reasoning", "message"]
    assert asked.output[0].summary[0].text and "<think>" not in asked.output_text
    assert chat_calls(standin)[-1]["think"] == "high"
    events, final = streamed(client, model=MODEL, input=ask, reasoning={"effort": "high"})
    assert "response.reasoning_summary_text.delta" in [event.type for event in events]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == asked.output[0].summary[0].text
    plain = client.responses.create(model=MODEL, input=ask)  # silent: the server's default
    assert [item.type for item in plain.output] == ["message"]
    assert plain.output_text == asked.output_text and "<think>" not in plain.output_text
    off = client.responses.create(model=MODEL, input=question(), reasoning={"effort": "none"})
    assert [item.type for item in off.output] == ["message"]


def test_bad_requests_are_400s_in_the_openai_shape(client, standin):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="hi", reasoning={"effort": "extreme"})
    assert refused.value.body["type"] == "invalid_request_error"
    assert "invalid reasoning value" in refused.value.body["message"]
    answer = requests.post(client.base_url.join("responses").__str__(), data=b"{not json",
                           headers={"content-type": "application/json"}, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert standin.count("/api/chat") == 0


# ------------------------------------------------------------------ tools


def test_a_function_call_then_its_output(client, standin):
    ask = "What is the weather in Paris? " + question()
    called = client.responses.create(model=MODEL, input=ask, tools=[TOOL])
    [item] = called.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert item.status == "completed" and item.id.startswith("fc_")
    assert isinstance(json.loads(item.arguments), dict) and item.call_id
    # the same streamed: a cache hit, the call in function_call events
    events, final = streamed(client, model=MODEL, input=ask, tools=[TOOL])
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert [o.type for o in final.output] == ["function_call"]
    assert final.output[0].arguments == item.arguments and standin.count("/api/chat") == 1
    # the client runs the tool and sends its output with the call
    history = [{"role": "user", "content": ask},
               {"type": "function_call", "call_id": item.call_id, "name": item.name,
                "arguments": item.arguments},
               {"type": "function_call_output", "call_id": item.call_id, "output": "sunny, 24C"}]
    answered = client.responses.create(model=MODEL, input=history, tools=[TOOL])
    assert answered.output[0].type == "message" and answered.output_text
    native = chat_calls(standin)[-1]
    assert native["messages"][1:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": item.call_id, "function": {"name": "get_weather",
                                              "arguments": json.loads(item.arguments)}}]},
        {"role": "tool", "content": "sunny, 24C", "tool_call_id": item.call_id}]
    assert native["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": TOOL["description"],
        "parameters": TOOL["parameters"]}}]
    # or, as the Agents SDK does, only the output, after the response that called
    follow = client.responses.create(model=MODEL, previous_response_id=called.id, tools=[TOOL],
                                     input=[{"type": "function_call_output",
                                             "call_id": item.call_id, "output": "sunny, 24C"}])
    assert follow.output_text == answered.output_text  # the same conversation: a cache hit
    assert standin.count("/api/chat") == 2


# ------------------------------------------------------------------ previous_response_id


def test_previous_response_id_continues_the_conversation(client, standin):
    said = "My name is Ada. " + question()
    first = client.responses.create(model=MODEL, input=said)
    second = client.responses.create(model=MODEL, previous_response_id=first.id,
                                     input="What is my name?")
    assert second.previous_response_id == first.id and second.output_text
    assert chat_calls(standin)[-1]["messages"] == [
        {"role": "user", "content": said},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}]
    # a chain, streamed: the third turn sees the first two
    events, third = streamed(client, model=MODEL, previous_response_id=second.id,
                             input="And again?")
    assert third.status == "completed"
    assert [m["role"] for m in chat_calls(standin)[-1]["messages"]] == [
        "user", "assistant", "user", "assistant", "user"]
    # the same follow-up again is a cache hit, streamed or whole: no upstream call
    calls = standin.count("/api/chat")
    hit = client.responses.with_raw_response.create(model=MODEL, previous_response_id=first.id,
                                                    input="What is my name?")
    assert hit.headers["x-cache"].startswith("HIT")
    assert hit.parse().output_text == second.output_text
    events, replayed = streamed(client, model=MODEL, previous_response_id=first.id,
                                input="What is my name?")
    assert replayed.output_text == second.output_text
    assert standin.count("/api/chat") == calls
    # a hit's own id continues the conversation too
    follow = client.responses.create(model=MODEL, previous_response_id=replayed.id,
                                     input="Thanks.")
    assert follow.output_text and len(chat_calls(standin)[-1]["messages"]) == 5


def test_every_repeat_of_an_answer_can_be_continued(make_bridge, standin, tmp_path):
    """Repeats of a memory hit that the bridge would answer as the bytes it sent
    (`fast_hits`) go through the adapter here: each id names a record of its own."""
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path),
                         "--cache-hot-threshold", "1", workers=1)
    show_upstream_is_open(bridge)
    standin.reset()
    client, ask = sdk(bridge.url), question()
    answers = [client.responses.create(model=MODEL, input=ask) for _ in range(6)]
    assert len({answer.id for answer in answers}) == 6 and standin.count("/api/chat") == 1
    for answer in answers:
        follow = client.responses.create(model=MODEL, previous_response_id=answer.id,
                                         input="Say it again.")
        assert follow.output_text
    assert [len(call["messages"]) for call in chat_calls(standin)] == [1, 3]


@pytest.mark.parametrize("stream", [False, True])
def test_repeats_on_one_connection_have_ids_of_their_own_and_each_continues(
        make_bridge, standin, tmp_path, stream):
    """Repeats of a memory hit (answered before Flask when they come fast) share the
    record of their answer: each with ids of its own, each one continued from the answer
    it gave, the items it named included."""
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path), "--cache-hot-threshold",
                         "1", workers=1)
    show_upstream_is_open(bridge)
    standin.reset()
    ask, count = question(), 12
    body = {"model": MODEL, "input": ask, "tools": [TOOL], "stream": stream}
    with requests.Session() as session:
        answers = [session.post(bridge.url + "/v1/responses", json=body, timeout=30,
                                headers={"authorization": "Bearer sk-test"})  # as `sdk`'s
                   for _ in range(count)]
    assert [answer.status_code for answer in answers] == [200] * count
    assert {answer.headers["x-cache"] for answer in answers[1:]} == {"HIT-MEMORY"}
    if stream:
        finals = [[json.loads(line[6:]) for line in answer.text.split("\n")
                   if line.startswith("data: ")][-1]["response"] for answer in answers]
    else:
        finals = [answer.json() for answer in answers]
    assert len({final["id"] for final in finals}) == count
    items = [final["output"][0] for final in finals]
    assert len({item["id"] for item in items}) == count
    assert len({(item["name"], item["arguments"], item["call_id"]) for item in items}) == 1
    assert standin.count("/api/chat") == 1
    client = sdk(bridge.url)
    for final, item in zip(finals, items, strict=True):
        follow = client.responses.create(
            model=MODEL, previous_response_id=final["id"], tools=[TOOL],
            input=[{"type": "function_call_output", "call_id": item["call_id"],
                    "output": "sunny"}])
        assert follow.output_text
    # each follow-up was the same conversation: one upstream call for all of them
    assert standin.count("/api/chat") == 2
    assert chat_calls(standin)[-1]["messages"][1:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": items[0]["call_id"], "function": {
                "name": "get_weather", "arguments": json.loads(items[0]["arguments"])}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": items[0]["call_id"]}]


def test_a_refreshed_answer_leaves_the_earlier_ones_their_own_conversation(client, standin):
    ask = "My name is Ada. " + question()
    first = client.responses.create(model=MODEL, input=ask)
    hit = client.responses.create(model=MODEL, input=ask)
    refreshed = client.responses.with_raw_response.create(
        model=MODEL, input=ask, extra_headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "MISS" and standin.count("/api/chat") == 2
    ids = [first.id, hit.id, refreshed.parse().id]
    assert len({ident[:5 + 24] for ident in ids}) == 3  # three records: one per answer
    for ident in ids:
        follow = client.responses.create(model=MODEL, previous_response_id=ident,
                                         input="What is my name?")
        assert follow.output_text
        assert chat_calls(standin)[-1]["messages"][:2] == [
            {"role": "user", "content": ask},
            {"role": "assistant", "content": first.output_text}]


def test_an_unknown_previous_response_is_a_400_naming_the_field(client, standin):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, previous_response_id="resp_nope", input="hi")
    assert refused.value.body["param"] == "previous_response_id"
    assert "not found" in refused.value.body["message"]
    assert standin.count("/api/chat") == 0


def test_another_client_cannot_continue_someone_elses_response(cached, standin):
    mine = sdk(cached.url, "sk-alice").responses.create(model=MODEL, input=question())
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(cached.url, "sk-mallory").responses.create(model=MODEL, input="What did I say?",
                                                       previous_response_id=mine.id)
    assert refused.value.body["param"] == "previous_response_id"
    assert standin.count("/api/chat") == 1


def test_without_the_cache_previous_response_id_is_refused_saying_why(bridge, standin):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(bridge.url).responses.create(model=MODEL, previous_response_id="resp_1", input="hi")
    assert refused.value.body["param"] == "previous_response_id"
    assert "--enable-cache" in refused.value.body["message"]
    assert standin.count("/api/chat") == 0


def test_records_are_shared_by_instances_through_redis(redis_server, standin, tmp_path):
    prefix = f"--redis-prefix=responses-{secrets.token_hex(4)}"
    flags = ("--enable-cache", "--redis-url", redis_server.url, prefix)
    with start_bridge(*flags, "--cache-dir", str(tmp_path / "a"), upstream=standin.url,
                      workers=1, log_dir=tmp_path) as one, \
            start_bridge(*flags, "--cache-dir", str(tmp_path / "b"), upstream=standin.url,
                         workers=1, log_dir=tmp_path) as two:
        first = sdk(one.url).responses.create(model=MODEL, input="My name is Ada.")
        second = sdk(two.url).responses.create(model=MODEL, previous_response_id=first.id,
                                               input="What is my name?")
        assert second.output_text
        assert len(chat_calls(standin)[-1]["messages"]) == 3


# ------------------------------------------------------------------ shared mode, limits


@dataclass
class Shared:
    process: Process
    keys: dict[str, str]


@pytest.fixture(scope="module")
def shared(standin_server, tmp_path_factory) -> Iterator[Shared]:
    home = tmp_path_factory.mktemp("shared")
    state = home / "state"
    keys = {}
    for name, flags in (("alice", ()), ("bob", ()), ("limited", ("--rate", "2/min"))):
        done = keys_command(state, "create", name, *flags)
        assert done.returncode == 0, done.stderr
        keys[name] = done.stdout.strip()
    (home / "upstream.key").write_text("sk-upstream-" + secrets.token_hex(8) + "\n")
    with start_bridge("--enable-shared-mode", "--api-key-file", str(home / "upstream.key"),
                      "--state-dir", str(state), "--enable-cache", "--cache-dir",
                      str(home / "cache"), upstream=standin_server.url, workers=2,
                      log_dir=home) as process:
        yield Shared(process, keys)


def test_shared_mode_takes_a_client_key_and_sends_the_bridges(shared, standin):
    answer = sdk(shared.process.url, shared.keys["alice"]).responses.create(
        model=MODEL, input=question())
    assert answer.output_text
    [sent] = [request for request in standin.requests if request.path == "/api/chat"]
    headers = {name.lower(): value for name, value in sent.headers.items()}
    assert headers["authorization"].startswith("Bearer sk-upstream-")
    assert shared.keys["alice"] not in json.dumps(sent.as_dict())
    follow = sdk(shared.process.url, shared.keys["alice"]).responses.create(
        model=MODEL, previous_response_id=answer.id, input="More?")
    assert follow.output_text
    with pytest.raises(openai.BadRequestError):  # bob cannot continue alice's answer
        sdk(shared.process.url, shared.keys["bob"]).responses.create(
            model=MODEL, previous_response_id=answer.id, input="More?")
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(shared.process.url, "sk-wrong").responses.create(model=MODEL, input="hi")
    assert refused.value.status_code == 401
    assert refused.value.body["type"] == "authentication_error"


def test_the_rate_limit_answers_in_the_openai_shape(shared, standin):
    client = sdk(shared.process.url, shared.keys["limited"])
    for _ in range(2):
        client.responses.create(model=MODEL, input=question())
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model=MODEL, input=question())
    assert refused.value.status_code == 429
    assert refused.value.body["type"] == "rate_limit_error"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):  # a stream is refused before it starts
        list(client.responses.create(model=MODEL, input=question(), stream=True))


# ------------------------------------------------------------------ broken streams


@pytest.mark.parametrize("kind", ["inband", "cut"])
def test_a_stream_broken_midway_ends_with_response_failed(client, standin, kind):
    standin.push_fault(Fault(kind, after_chunks=3, path="/api/chat"))
    events = list(client.responses.create(model=MODEL, input=question(), stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error.message
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert standin.count("/api/chat") == 1


def test_the_bridges_limits_answer_in_the_openai_shape(make_bridge, standin):
    small = make_bridge("--max-body-size", "4096", workers=1)
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(small.url).responses.create(model=MODEL, input="x" * 8000)
    assert refused.value.status_code == 413
    assert refused.value.body["type"] == "invalid_request_error"
    assert refused.value.body["code"] == "payload_too_large"
    busy = make_bridge("--max-concurrency", "1", "--max-queue", "0", workers=1)
    host, port = busy.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": MODEL, "input": question(), "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as held:  # the one slot
        held.sendall(http_request("/v1/responses", body, "X-Standin-First-Token-Delay: 60"))
        wait_for(lambda: standin.stats(with_requests=False)["in_flight"] >= 1, timeout=30,
                 what="the held request at the stand-in")
        with pytest.raises(openai.APIStatusError) as overloaded:
            sdk(busy.url).responses.create(model=MODEL, input=question())
    assert overloaded.value.status_code == 503
    assert overloaded.value.body["type"] == "api_error"
    for bridge in (small, busy):  # the access log names the client's API
        wait_for(lambda bridge=bridge: '"POST /v1/responses" 413' in small.log() and
                 "api=responses" in bridge.log(), what="the access lines")
