"""The Anthropic upstream kind alone: canonical requests as the Messages API takes them,
and its answers, streams and errors back in the canonical form — shapes from Anthropic's
API reference (Messages, Streaming Messages, Models, Errors) and the converter tests of
Ollama (anthropic/anthropic_test.go), which go the other way."""

from __future__ import annotations

import base64
import json

import pytest

from bridge.core import streaming
from bridge.surfaces.adapter import CHAT, EMBED, MODELS, SHOW, Unsupported
from bridge.surfaces.anthropic import Anthropic
from bridge.surfaces.anthropic_kind import DEFAULT_MAX_TOKENS, AnthropicKind
from bridge.surfaces.ollama import OllamaChat, OllamaGenerate
from bridge.surfaces.responses import Responses

KIND = AnthropicKind()
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR fake png").decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF fake jpeg").decode()
WEBP = base64.b64encode(b"RIFF\x24\x00\x00\x00WEBPVP8 fake webp").decode()
BMP = base64.b64encode(b"BM fake bitmap, no provider takes it").decode()


def sent(**native):
    """The Messages API body for a canonical chat request."""
    return KIND.outbound(CHAT, {"model": "claude-sonnet-4-5", **native}).body


def test_a_chat_goes_to_v1_messages_with_its_version_and_key():
    outbound = KIND.outbound(CHAT, {"model": "claude-sonnet-4-5", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    assert (outbound.method, outbound.path) == ("POST", "/v1/messages")
    assert outbound.headers == {"anthropic-version": "2023-06-01"}
    assert KIND.credentials("sk-ant-1") == {"x-api-key": "sk-ant-1"}
    assert (KIND.name, KIND.probe, KIND.speaks) == ("anthropic", "/v1/models", frozenset())
    # max_tokens is required by Anthropic: a documented default when the client set none
    assert outbound.body == {
        "model": "claude-sonnet-4-5", "max_tokens": DEFAULT_MAX_TOKENS, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "stream": True}
    whole = KIND.outbound(CHAT, {"model": "m", "stream": False,
                                 "messages": [{"role": "user", "content": "Hi"}]})
    assert "stream" not in whole.body


def test_images_tool_calls_and_tool_results_become_content_blocks():
    body = sent(messages=[
        {"role": "system", "content": "You read files."},
        {"role": "user", "content": "What is in these?", "images": [PNG, JPEG]},
        {"role": "user", "content": "And this one?", "images": [WEBP]},
        {"role": "assistant", "content": "Reading.", "thinking": "I should read them.",
         "tool_calls": [
             {"id": "toolu_01A", "function": {"name": "read", "arguments": {"path": "a"}}},
             {"function": {"name": "stat", "arguments": '{"path": "b"}'}}]},
        {"role": "tool", "content": "b: 12 bytes", "tool_name": "stat"},
        {"role": "tool", "content": "a: a cat", "tool_call_id": "toolu_01A"},
        {"role": "user", "content": "So?"},
        {"role": "assistant", "content": "", "thinking": "only thinking: nothing to send"},
        {"role": "system", "content": "Answer in French."},
    ])
    assert body["system"] == "You read files.\n\nAnswer in French."

    def image(kind, data):
        return {"type": "image", "source": {"type": "base64", "media_type": kind,
                                            "data": data}}

    first, second, third = body["messages"]
    assert first == {"role": "user", "content": [
        image("image/png", PNG), image("image/jpeg", JPEG),
        {"type": "text", "text": "What is in these?"},
        image("image/webp", WEBP), {"type": "text", "text": "And this one?"}]}
    read, stat = second["content"][1:]
    assert second == {"role": "assistant", "content": [  # its thinking dropped: unsigned
        {"type": "text", "text": "Reading."},
        {"type": "tool_use", "id": "toolu_01A", "name": "read", "input": {"path": "a"}},
        {"type": "tool_use", "id": stat["id"], "name": "stat", "input": {"path": "b"}}]}
    assert stat["id"].startswith("toolu_") and len(stat["id"]) == len("toolu_") + 24
    # tool results first in their turn, each naming the call it answers
    assert third == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": stat["id"], "content": "b: 12 bytes"},
        {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "a: a cat"},
        {"type": "text", "text": "So?"}]}
    assert read["id"] == "toolu_01A"
    # a tool result with neither id nor name answers the first call not yet answered
    unnamed = sent(messages=[
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "toolu_X", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": "done", "images": [PNG]}])["messages"][1]
    assert unnamed["content"] == [{"type": "tool_result", "tool_use_id": "toolu_X", "content": [
        image("image/png", PNG), {"type": "text", "text": "done"}]}]


def test_tools_and_options():
    body = sent(messages=[{"role": "user", "content": "Weather?"}], tools=[
        {"type": "function", "function": {
            "name": "get_weather", "description": "Get the current weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                           "required": ["location"]}}},
        {"type": "function", "function": {"name": "now"}}],
        options={"num_predict": 256, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
                 "stop": ["\n\nHuman:", "END"], "seed": 42, "num_ctx": 8192,
                 "repeat_penalty": 1.1, "mirostat": 0}, keep_alive="5m")
    assert body["tools"] == [
        {"name": "get_weather", "description": "Get the current weather", "input_schema": {
            "type": "object", "properties": {"location": {"type": "string"}},
            "required": ["location"]}},
        {"name": "now", "input_schema": {"type": "object"}}]
    # seed, runtime and sampler-only options dropped (documented in the module)
    assert {name: value for name, value in body.items()
            if name not in ("model", "messages", "tools", "stream")} == {
        "max_tokens": 256, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
        "stop_sequences": ["\n\nHuman:", "END"]}
    assert sent(messages=[], options={"stop": "END", "num_predict": -1})[
        "stop_sequences"] == ["END"]
    assert sent(messages=[], options={"num_predict": -1})["max_tokens"] == DEFAULT_MAX_TOKENS


@pytest.mark.parametrize("think, budget", [(True, 4096), ("low", 1024), ("medium", 4096),
                                           ("high", 16384), ("max", 24576)])
def test_thinking_gets_a_budget_below_max_tokens(think, budget):
    body = sent(messages=[{"role": "user", "content": "Why?"}], think=think,
                options={"num_predict": 2000, "temperature": 0.3, "top_k": 5})
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] > budget
    assert body["max_tokens"] == (2000 if budget < 2000 else budget + 2000)
    # the API refuses sampler settings while Claude thinks
    assert "temperature" not in body and "top_k" not in body


def test_no_thinking_when_switched_off_or_when_answering_tool_calls():
    assert "thinking" not in sent(messages=[{"role": "user", "content": "Hi"}], think=False)
    loop = sent(think="high", messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "thinking": "call it", "tool_calls": [
            {"id": "toolu_1", "function": {"name": "get_weather", "arguments": {}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1"}])
    assert "thinking" not in loop  # Anthropic would want the first turn's signed thinking


@pytest.mark.parametrize("native, param", [
    ({"format": "json"}, "format"),
    ({"format": {"type": "object", "properties": {"a": {"type": "string"}}}}, "format"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "?", "images": [BMP]}]}, "messages[0].images[0]"),
    ({"messages": [{"role": "user", "content": "?"}, {"role": "tool", "content": "orphan"}]},
     "messages[1]"),
])
def test_what_anthropic_cannot_express_is_refused_by_name(native, param):
    with pytest.raises(Unsupported) as refused:
        KIND.outbound(CHAT, {"model": "m", "messages": [], **native})
    assert refused.value.param == param


def test_no_embeddings():
    with pytest.raises(Unsupported) as refused:
        KIND.outbound(EMBED, {"model": "claude-sonnet-4-5", "input": "hello"})
    assert refused.value.param == "input" and "no embeddings" in refused.value.reason


def test_a_whole_message_becomes_the_native_answer():
    message = {  # the API reference's Message object
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5", "content": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQB"},
            {"type": "text", "text": "Let me check "},
            {"type": "text", "text": "the weather."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"location": "San Francisco, CA"}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 2095, "output_tokens": 503,
                  "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100}}
    answer = KIND.whole(CHAT, message, {"model": "claude-sonnet-4-5"})
    assert answer.pop("created_at").endswith("Z")
    assert answer == {
        "model": "claude-sonnet-4-5", "message": {
            "role": "assistant", "content": "Let me check the weather.",
            "thinking": "The user wants weather.", "tool_calls": [
                {"id": "toolu_01A09q90qw90lq917835lq9", "function": {
                    "name": "get_weather", "arguments": {"location": "San Francisco, CA"}}}]},
        "done": True, "done_reason": "stop", "prompt_eval_count": 2200, "eval_count": 503}
    cut = KIND.whole(CHAT, {**message, "content": [{"type": "text", "text": "Par"}],
                            "stop_reason": "max_tokens"}, {"model": "m"})
    assert cut["done_reason"] == "length" and cut["message"] == {"role": "assistant",
                                                                 "content": "Par"}


def test_models_and_a_models_description():
    outbound = KIND.outbound(MODELS, {})
    assert (outbound.method, outbound.path.split("?")[0], outbound.body) == (
        "GET", "/v1/models", None)
    assert outbound.headers == {"anthropic-version": "2023-06-01"}
    listed = {"data": [
        {"type": "model", "id": "claude-sonnet-4-5-20250929",
         "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"},
        {"type": "model", "id": "claude-3-haiku-20240307", "display_name": "Claude Haiku 3",
         "created_at": "2024-03-07T00:00:00Z"}],
        "has_more": False, "first_id": "claude-sonnet-4-5-20250929",
        "last_id": "claude-3-haiku-20240307"}
    tags = KIND.whole(MODELS, listed, {})["models"]
    assert [(tag["name"], tag["model"], tag["modified_at"]) for tag in tags] == [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929", "2025-09-29T00:00:00Z"),
        ("claude-3-haiku-20240307", "claude-3-haiku-20240307", "2024-03-07T00:00:00Z")]
    show = KIND.outbound(SHOW, {"model": "claude-sonnet-4-5-20250929"})
    assert (show.method, show.path) == ("GET", "/v1/models/claude-sonnet-4-5-20250929")
    shown = KIND.whole(SHOW, listed["data"][0], {"model": "claude-sonnet-4-5-20250929"})
    assert shown["capabilities"] == ["completion", "tools", "vision", "thinking"]
    assert shown["details"]["family"] == "claude"
    assert KIND.whole(SHOW, listed["data"][1], {})["capabilities"] == [
        "completion", "tools", "vision"]  # before extended thinking


def test_the_message_of_an_error_body():
    assert KIND.error({"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: Field required"}}) == \
        "max_tokens: Field required"
    assert KIND.error("<html>bad gateway</html>") == ""


# --- a recorded stream ----------------------------------------------------------------

def event(data):
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"


def delta(index, **content):
    return event({"type": "content_block_delta", "index": index, "delta": content})


# Anthropic's stream of a thinking block, a text block and a tool_use block whose input
# arrives in pieces (the API reference's "Streaming Messages" examples)
RECORDED = [
    event({"type": "message_start", "message": {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 472, "output_tokens": 2,
                                         "cache_read_input_tokens": 8}}}),
    event({"type": "content_block_start", "index": 0,
           "content_block": {"type": "thinking", "thinking": ""}}),
    delta(0, type="thinking_delta", thinking="The user asks about"),
    delta(0, type="thinking_delta", thinking=" the weather."),
    delta(0, type="signature_delta", signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3h"),
    event({"type": "content_block_stop", "index": 0}),
    event({"type": "content_block_start", "index": 1,
           "content_block": {"type": "text", "text": ""}}),
    'event: ping\ndata: {"type": "ping"}\n\n',
    delta(1, type="text_delta", text="Okay, let's check"),
    delta(1, type="text_delta", text=" the weather."),
    event({"type": "content_block_stop", "index": 1}),
    event({"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
        "input": {}}}),
    delta(2, type="input_json_delta", partial_json=""),
    delta(2, type="input_json_delta", partial_json='{"location":'),
    delta(2, type="input_json_delta", partial_json=' "San Fra'),
    delta(2, type="input_json_delta", partial_json='ncisco, CA", "unit": "celsius"}'),
    event({"type": "content_block_stop", "index": 2}),
    event({"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                              "stop_sequence": None},
           "usage": {"output_tokens": 89}}),
    event({"type": "message_stop"}),
]
CALL = {"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "function": {
    "name": "get_weather", "arguments": {"location": "San Francisco, CA", "unit": "celsius"}}}


def read_events(events, chunk=7):
    """The canonical frames of each upstream event, in order, as the stream reader splits
    the bytes (arriving `chunk` bytes at a time) and the kind's reader reads them."""
    reader = KIND.reader(CHAT, {"model": "claude-sonnet-4-5"})
    data = "".join(events).encode()
    frames = streaming.read_sse(data[at:at + chunk] for at in range(0, len(data), chunk))
    return [reader.frame(frame) for frame in frames]


def said(frames):
    return [frame["message"] for frame in frames]


def test_a_recorded_stream_gives_canonical_frames_as_its_events_arrive():
    per_event = read_events(RECORDED)
    assert len(per_event) == len(RECORDED)
    (start, thinking_start, thought1, thought2, signature, thinking_stop, text_start, ping,
     text1, text2, text_stop, tool_start, *pieces, tool_stop, message_delta, stop) = per_event
    assert [start, thinking_start, signature, thinking_stop, text_start, ping, text_stop,
            tool_start, *pieces, message_delta] == [[]] * 13
    assert said(thought1 + thought2) == [
        {"role": "assistant", "content": "", "thinking": "The user asks about"},
        {"role": "assistant", "content": "", "thinking": " the weather."}]
    assert said(text1 + text2) == [{"role": "assistant", "content": "Okay, let's check"},
                                   {"role": "assistant", "content": " the weather."}]
    # the input's pieces come out as one whole call, at its block's stop
    assert said(tool_stop) == [{"role": "assistant", "content": "", "tool_calls": [CALL]}]
    [last] = stop
    assert last["done"] is True and all(frame["done"] is False for frame in text1 + tool_stop)
    assert {name: last[name] for name in ("model", "done_reason", "prompt_eval_count",
                                          "eval_count")} == {
        "model": "claude-sonnet-4-5-20250929", "done_reason": "stop",
        "prompt_eval_count": 480, "eval_count": 89}


def test_an_error_event_and_a_cut_stream():
    failed = read_events([*RECORDED[:9], event({"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})])
    assert failed[-1] == [{"error": "Overloaded"}]
    reader = KIND.reader(CHAT, {"model": "m"})
    for frame in streaming.read_sse([b"".join(part.encode() for part in RECORDED[:9])]):
        reader.frame(frame)
    assert reader.end() == []  # no end of the message: the crossing fails the stream
    for frame in streaming.read_sse([RECORDED[-2].encode()]):
        reader.frame(frame)
    assert [frame["done_reason"] for frame in reader.end()] == ["stop"]


def through(surface, request, events=RECORDED):
    """The client's frames for each upstream event: the kind's reader, then `surface`'s
    translator, frame by frame."""
    call = surface.request(request, {})
    translator = surface.translator(call)
    return [[out for native in frames for out in translator.frame(native)]
            for frames in read_events(events)]


def test_the_stream_reaches_a_responses_client_piece_by_piece():
    per_event = through(Responses(), {"model": "claude-sonnet-4-5", "input": "Weather in SF?",
                                      "stream": True})
    names = [[frame.event.decode() for frame in frames] for frames in per_event]
    assert names[2][-1] == names[3][-1] == "response.reasoning_summary_text.delta"
    assert names[8][-1] == names[9][-1] == "response.output_text.delta"
    assert [frame.data["delta"] for frame in per_event[8] + per_event[9]
            if frame.event == b"response.output_text.delta"] == [
        "Okay, let's check", " the weather."]
    [arguments] = [frame.data for frame in per_event[16]
                   if frame.event == b"response.function_call_arguments.delta"]
    assert json.loads(arguments["delta"]) == CALL["function"]["arguments"]
    assert all(not frames for frames in per_event[12:16])  # the pieces say nothing yet
    final = per_event[-1][-1].data["response"]
    assert per_event[-1][-1].event == b"response.completed"
    assert final["usage"]["input_tokens"] == 480 and final["usage"]["output_tokens"] == 89


def test_the_stream_reaches_ollama_clients_as_ndjson_lines():
    chat = through(OllamaChat(), {"model": "claude-sonnet-4-5", "messages": []})
    lines = [frame.data for frames in chat for frame in frames]
    assert [line["message"].get("content") for line in lines] == [
        "", "", "Okay, let's check", " the weather.", "", ""]
    assert lines[4]["message"]["tool_calls"] == [CALL] and lines[-1]["done"] is True
    generate = through(OllamaGenerate(), {"model": "claude-sonnet-4-5", "prompt": "SF?"})
    lines = [frame.data for frames in generate for frame in frames]
    assert [(line.get("thinking"), line["response"]) for line in lines[:4]] == [
        ("The user asks about", ""), (" the weather.", ""), (None, "Okay, let's check"),
        (None, " the weather.")]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 89
    assert "context" not in lines[-1]


def test_an_anthropic_request_crosses_to_an_anthropic_upstream_unchanged():
    """Anthropic's request → the canonical form → this kind: what both sides express
    comes out as it went in."""
    request = {
        "model": "claude-sonnet-4-5", "max_tokens": 1024, "system": "Be brief.",
        "temperature": 0.5, "top_p": 0.9, "top_k": 10, "stop_sequences": ["END"],
        "stream": True,
        "tools": [{"name": "get_weather", "description": "Weather",
                   "input_schema": {"type": "object", "properties": {}}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}},
                {"type": "text", "text": "Weather here?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "text", "text": "Thanks"}]}]}
    canonical = Anthropic().request(request, {}).native
    assert KIND.outbound(CHAT, canonical).body == request


@pytest.mark.parametrize("garbage", [
    "event: content_block_delta\ndata: not json\n\n",
    'event: content_block_start\ndata: {"type": "content_block_start", "content_block": 3}\n\n',
    'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": []}\n\n',
    'event: message_delta\ndata: {"type": "message_delta", "usage": "many"}\n\n',
    'data: ["a plain data line"]\n\n',
    ": a comment\n\n",
])
def test_what_the_stream_cannot_mean_says_nothing(garbage):
    """A malformed event costs nothing: the stream goes on around it."""
    per_event = read_events([*RECORDED[:9], garbage, *RECORDED[9:]])
    assert per_event[9] == []
    assert said(per_event[10]) == [{"role": "assistant", "content": " the weather."}]
    assert per_event[-1][0]["done"] is True
