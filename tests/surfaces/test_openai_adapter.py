"""The OpenAI adapters alone: the client wires (`OpenAIChat`, `OpenAICompletions`,
`OpenAIEmbeddings`, `OpenAIModels`) pinned to what Ollama's Go tests expect of its
middleware (openai/openai_test.go, middleware/openai_test.go), and `OpenAIKind` to
OpenAI's API reference and DeepSeek's stream: round trips through the canonical form,
a recorded stream read piece by piece and translated again for another client."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from bridge.core import streaming
from bridge.core.errors import BadRequest
from bridge.core.exchange import Frame
from bridge.ollama_standin import wire
from bridge.surfaces.adapter import CHAT, EMBED, MODELS, SHOW, Unsupported
from bridge.surfaces.anthropic import Anthropic
from bridge.surfaces.openai import (
    OpenAIChat,
    OpenAICompletions,
    OpenAIEmbeddings,
    OpenAIKind,
    OpenAIModels,
)

CHAT_WIRE = OpenAIChat()
KIND = OpenAIKind()
# Ollama's test image (a 1x1 PNG)
IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVO"
         "RK5CYII=")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string"}}}}}


def chat(**request):
    return CHAT_WIRE.request({"model": "test-model", **request}, {})


def native(**request):
    return chat(**request).native


def hello():
    return [{"role": "user", "content": "Hello"}]


# ------------------------------------------------------------------ client requests


def test_basic_chat_request():  # TestChatMiddleware "chat handler": no defaults added
    assert native(messages=hello()) == {
        "model": "test-model", "messages": [{"role": "user", "content": "Hello"}],
        "stream": False}


def test_chat_request_with_options():  # TestChatMiddleware "chat handler with options"
    call = chat(messages=hello(), stream=True, stream_options={"include_usage": True},
                max_tokens=999, seed=123, stop=["\n", "stop"], temperature=3.0,
                frequency_penalty=4.0, presence_penalty=5.0, top_p=6.0,
                response_format={"type": "json_object"}, user="u1", metadata={"a": "b"})
    assert call.stream and call.include_usage
    assert call.native == {
        "model": "test-model", "messages": [{"role": "user", "content": "Hello"}],
        "stream": True, "format": "json",
        "options": {"num_predict": 999, "seed": 123, "stop": ["\n", "stop"],
                    "temperature": 3.0, "frequency_penalty": 4.0, "presence_penalty": 5.0,
                    "top_p": 6.0}}


def test_stop_string_and_max_completion_tokens():
    assert native(messages=hello(), stop="END", max_tokens=5,
                  max_completion_tokens=50)["options"] == {"stop": ["END"], "num_predict": 50}


def test_image_parts_stay_one_message():  # TestFromChatRequest_WithImage, as one message
    content = [{"type": "text", "text": "Hello"},
               {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + IMAGE}}]
    assert native(messages=[{"role": "user", "content": content}])["messages"] == [
        {"role": "user", "content": "Hello", "images": [IMAGE]}]


def test_image_url_refused_with_its_place():
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    with pytest.raises(BadRequest) as refused:
        native(messages=[{"role": "user", "content": content}])
    assert refused.value.param == "messages[0].content[0].image_url"
    assert "base64" in refused.value.message


def test_tool_calls_and_results():  # "chat handler with tools", "tool response" cases
    messages = [
        {"role": "user", "content": "What's the weather like in Paris Today?"},
        {"role": "assistant", "reasoning": "Let's look it up", "tool_calls": [
            {"id": "id", "type": "function", "function": {
                "name": "get_current_weather",
                "arguments": '{"location": "Paris, France", "format": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "id", "content": "The weather in Paris is 20 degrees"},
    ]
    assert native(messages=messages, tools=[WEATHER])["messages"][1:] == [
        {"role": "assistant", "content": "", "thinking": "Let's look it up", "tool_calls": [
            {"id": "id", "function": {"name": "get_current_weather", "arguments": {
                "location": "Paris, France", "format": "celsius"}}}]},
        {"role": "tool", "content": "The weather in Paris is 20 degrees",
         "tool_name": "get_current_weather", "tool_call_id": "id"}]


def test_deepseek_reasoning_content_is_thinking():
    messages = [*hello(), {"role": "assistant", "content": "Hi", "reasoning_content": "Greet"}]
    assert native(messages=messages)["messages"][1] == {
        "role": "assistant", "content": "Hi", "thinking": "Greet"}


def test_invalid_tool_call_arguments():
    messages = [{"role": "assistant", "tool_calls": [
        {"id": "id", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(BadRequest) as refused:
        native(messages=messages)
    assert refused.value.param == "messages[0].tool_calls[0].function.arguments"


@pytest.mark.parametrize(("effort", "think"), [  # TestFromChatRequest_ReasoningEffort
    ("high", "high"), ("medium", "medium"), ("low", "low"), ("max", "max"),
    ("minimal", "low"), ("xhigh", "max"), ("ultra", "max"), ("none", False)])
def test_reasoning_effort(effort, think):
    assert native(messages=hello(), reasoning_effort=effort)["think"] == think
    assert native(messages=hello(), reasoning={"effort": effort})["think"] == think


def test_invalid_reasoning_effort_names_the_field():
    with pytest.raises(BadRequest) as refused:
        native(messages=hello(), reasoning_effort="extreme")
    assert refused.value.param == "reasoning_effort"
    assert "think" not in native(messages=hello())


def test_json_schema_and_logprobs():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    got = native(messages=hello(), logprobs=True, top_logprobs=3, response_format={
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema}})
    assert (got["format"], got["logprobs"], got["top_logprobs"]) == (schema, True, 3)


def test_tool_choice_narrows_or_drops_the_tools():
    other = {"type": "function", "function": {"name": "other", "parameters": {}}}
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert native(messages=hello(), tools=[WEATHER, other], tool_choice=named)["tools"] == [
        WEATHER]
    assert "tools" not in native(messages=hello(), tools=[WEATHER], tool_choice="none")
    assert native(messages=hello(), tools=[WEATHER], tool_choice="required")["tools"] == [
        WEATHER]


def test_developer_is_system_and_empty_messages_refused():
    assert native(messages=[{"role": "developer", "content": "Be brief"}])["messages"] == [
        {"role": "system", "content": "Be brief"}]
    with pytest.raises(BadRequest, match="too short"):
        native(messages=[])


@pytest.mark.parametrize(("change", "param"), [
    ({"n": 2}, "n"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"modalities": ["text", "audio"]}, "audio"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
     "messages[0].content[0]"),
])
def test_unsupported_chat_fields_are_named(change, param):
    with pytest.raises(Unsupported) as refused:
        native(**{"messages": hello(), **change})
    assert refused.value.param == param


# ------------------------------------------------------------------ round trips


def test_openai_request_round_trips_through_the_canonical_form():
    """What an OpenAI client sends, through the canonical form to an OpenAI upstream,
    comes out as it went in (stream options as the crossing always asks them)."""
    original = {
        "model": "deepseek-chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + IMAGE}}]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        ],
        "tools": [WEATHER], "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["END"],
        "max_tokens": 100, "frequency_penalty": 0.1, "presence_penalty": 0.2,
        "response_format": {"type": "json_object"}, "reasoning_effort": "high",
        "logprobs": True, "top_logprobs": 2,
        "stream": True, "stream_options": {"include_usage": True},
    }
    call = CHAT_WIRE.request(original, {})
    out = KIND.outbound(CHAT, call.native)
    assert (out.method, out.path) == ("POST", "/v1/chat/completions")
    assert out.body == original


def test_native_request_round_trips_through_openai():
    """The canonical request, as an OpenAI upstream gets it and an OpenAI client would
    send it, is the canonical request again: images, tool calls with their ids and
    objects, the tool result's call, the reasoning of the current tool loop."""
    request = {
        "model": "deepseek-reasoner", "stream": True,
        "messages": [
            {"role": "user", "content": "Look", "images": [IMAGE]},
            {"role": "assistant", "content": "", "thinking": "Need the weather",
             "tool_calls": [{"id": "call_9", "function": {
                 "name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "18C", "tool_name": "get_weather",
             "tool_call_id": "call_9"},
        ],
        "tools": [WEATHER], "format": {"type": "object"}, "think": "low",
        "options": {"temperature": 0.5, "num_predict": 64, "stop": ["x"]},
    }
    back = CHAT_WIRE.request(KIND.outbound(CHAT, request).body, {}).native
    assert back == request


def test_outbound_tool_ids_and_reasoning_history():
    """A native history without ids: each call gets one from its place and content (the
    same on every turn), each result the id of its call by tool name; reasoning goes
    back only for the turn under way, as `reasoning_content`."""
    messages = [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": "", "thinking": "old turn",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                        {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "tool_name": "get_time", "content": "noon"},
        {"role": "tool", "content": "3C"},
        {"role": "user", "content": "And Paris?"},
        {"role": "assistant", "content": "", "thinking": "this turn",
         "tool_calls": [{"function": {"name": "get_weather",
                                      "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18C"},
    ]
    first = KIND.outbound(CHAT, {"model": "m", "messages": messages, "stream": False}).body
    again = KIND.outbound(CHAT, {"model": "m", "messages": messages, "stream": False}).body
    assert first == again
    sent = first["messages"]
    weather, time_ = (call["id"] for call in sent[1]["tool_calls"])
    assert weather.startswith("call_") and weather != time_
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                    "arguments": '{"city":"Oslo"}'}
    assert (sent[2]["tool_call_id"], sent[3]["tool_call_id"]) == (time_, weather)
    assert "reasoning_content" not in sent[1]
    assert sent[5]["reasoning_content"] == "this turn"
    assert sent[6]["tool_call_id"] == sent[5]["tool_calls"][0]["id"]
    assert "stream" not in first and "stream_options" not in first


def test_outbound_options_and_switches():
    body = KIND.outbound(CHAT, {
        "model": "m", "messages": hello(), "think": "max",
        "format": {"type": "object"},
        "options": {"num_ctx": 8192, "top_k": 40, "repeat_penalty": 1.1, "num_predict": -1,
                    "mirostat": 0, "temperature": 0}}).body
    assert body == {"model": "m", "messages": hello(), "temperature": 0,
                    "reasoning_effort": "xhigh",
                    "response_format": {"type": "json_schema", "json_schema": {
                        "name": "response", "schema": {"type": "object"}}},
                    "stream": True, "stream_options": {"include_usage": True}}
    assert "reasoning_effort" not in KIND.outbound(CHAT, {
        "model": "m", "messages": hello(), "think": False}).body


@pytest.mark.parametrize(("request_", "param"), [
    ({"options": {"mirostat": 2}}, "options.mirostat"),
    ({"messages": [{"role": "assistant", "content": "x", "images": [IMAGE]}]},
     "messages[0].images"),
    ({"messages": [{"role": "tool", "content": "orphan"}]}, "messages[0].tool_call_id"),
    ({"format": "yaml"}, "format"),
])
def test_unsupported_outbound_fields_are_named(request_, param):
    with pytest.raises(Unsupported) as refused:
        KIND.outbound(CHAT, {"model": "m", "messages": hello(), **request_})
    assert refused.value.param == param


def test_images_go_as_data_urls_of_their_type():
    gif = base64.b64encode(b"GIF89a" + bytes(10)).decode()
    sent = KIND.outbound(CHAT, {"model": "m", "messages": [
        {"role": "user", "content": "", "images": [gif]}]}).body["messages"][0]
    assert sent["content"] == [{"type": "image_url",
                                "image_url": {"url": f"data:image/gif;base64,{gif}"}}]
    with pytest.raises(Unsupported) as refused:
        KIND.outbound(CHAT, {"model": "m", "messages": [
            {"role": "user", "content": "x", "images": [IMAGE, "bm90IGFuIGltYWdl"]}]})
    assert refused.value.param == "messages[0].images[1]"


# ------------------------------------------------------------------ whole answers


def test_whole_chat_answer_to_canonical():  # the wire-format reference's §1
    body = {"id": "chatcmpl-512", "object": "chat.completion", "created": 1755000000,
            "model": "qwen3", "system_fingerprint": "fp_ollama", "choices": [{
                "index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": "Paris.", "reasoning": "The user asks…",
                    "tool_calls": [{"id": "call_k3j9x0ab", "index": 0, "type": "function",
                                    "function": {"name": "get_weather",
                                                 "arguments": '{"city":"Paris"}'}}]}}],
            "usage": {"prompt_tokens": 18, "completion_tokens": 42, "total_tokens": 60}}
    got = KIND.whole(CHAT, body, {"model": "qwen3"})
    assert got.pop("created_at").endswith("Z")
    assert got == {"model": "qwen3", "done": True, "done_reason": "stop",
                   "prompt_eval_count": 18, "eval_count": 42, "message": {
                       "role": "assistant", "content": "Paris.", "thinking": "The user asks…",
                       "tool_calls": [{"id": "call_k3j9x0ab", "function": {
                           "index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]}}


def test_whole_deepseek_answer_cut_by_length():
    body = {"choices": [{"index": 0, "finish_reason": "length", "logprobs": {"content": [
        {"token": "Hi", "logprob": -0.1, "top_logprobs": []}]},
        "message": {"role": "assistant", "content": None, "reasoning_content": "Hmm"}}]}
    got = KIND.whole(CHAT, body, {"model": "deepseek-reasoner"})
    assert (got["done_reason"], got["message"]["content"], got["message"]["thinking"]) == (
        "length", "", "Hmm")
    assert got["logprobs"] == [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]


def test_canonical_answer_as_chat_completion():  # TestToChatCompletion, ToToolCalls ids
    call = chat(messages=hello())
    body = CHAT_WIRE.body({
        "model": "test-model", "created_at": "2025-10-26T17:15:24.0977Z", "done": True,
        "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 20,
        "message": {"role": "assistant", "content": "", "thinking": "Call it",
                    "tool_calls": [{"id": "call_abc123", "function": {
                        "index": 2, "name": "get_weather", "arguments": {"city": "Seattle"}}},
                        {"function": {"name": "get_time", "arguments": {}}}]}}, call)
    assert body["id"] == f"chatcmpl-{call.ids[0]}" and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["reasoning"] == message["reasoning_content"] == "Call it"
    first, second = message["tool_calls"]
    assert first == {"id": "call_abc123", "index": 2, "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Seattle"}'}}
    assert second["id"].startswith("call_") and second["id"] in call.ids
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}


def test_a_done_reason_that_is_no_string_is_a_plain_stop():  # a broken upstream's frame
    body = CHAT_WIRE.body({"model": "m", "done": True, "done_reason": ["length"],
                           "message": {"role": "assistant", "content": "Hi"}},
                          chat(messages=hello()))
    assert body["choices"][0]["finish_reason"] == "stop"


# ------------------------------------------------------------------ streams


# DeepSeek's stream of a reasoner calling a tool, as recorded (ids shortened)
DEEPSEEK_STREAM = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in [
    {"id": "e1", "object": "chat.completion.chunk", "created": 1733000000,
     "model": "deepseek-reasoner", "choices": [{"index": 0, "delta": {
         "role": "assistant", "content": None, "reasoning_content": ""},
         "logprobs": None, "finish_reason": None}]},
    *({"id": "e1", "object": "chat.completion.chunk", "created": 1733000000,
       "model": "deepseek-reasoner", "choices": [{"index": 0, "delta": delta,
                                                  "logprobs": None, "finish_reason": None}]}
      for delta in [
          {"content": None, "reasoning_content": "The user"},
          {"content": None, "reasoning_content": " wants weather."},
          {"content": "Let me", "reasoning_content": None},
          {"content": " check.", "reasoning_content": None},
          {"tool_calls": [{"index": 0, "id": "call_0_ab", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]},
          {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
          {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}]),
    {"id": "e1", "object": "chat.completion.chunk", "created": 1733000000,
     "model": "deepseek-reasoner", "choices": [{"index": 0, "delta": {"content": ""},
                                                "logprobs": None,
                                                "finish_reason": "tool_calls"}]},
    {"id": "e1", "object": "chat.completion.chunk", "created": 1733000000,
     "model": "deepseek-reasoner", "choices": [],
     "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}},
]) + b"data: [DONE]\n\n"


def read(stream: bytes, request=None, pieces: int = 7) -> list[list[dict]]:
    """The canonical frames of each upstream frame, the stream cut in arbitrary pieces."""
    reader = KIND.reader(CHAT, request or {"model": "deepseek-reasoner"})
    cuts = [stream[at:at + pieces] for at in range(0, len(stream), pieces)]
    return [reader.frame(frame) for frame in streaming.read_sse(cuts)] + [reader.end()]


def messages_of(frames: list[dict]) -> list[dict]:
    return [frame["message"] for frame in frames]


def test_deepseek_stream_read_piece_by_piece():
    per_frame = read(DEEPSEEK_STREAM)
    assert [messages_of(frames) for frames in per_frame[:9]] == [
        [],
        [{"role": "assistant", "content": "", "thinking": "The user"}],
        [{"role": "assistant", "content": "", "thinking": " wants weather."}],
        [{"role": "assistant", "content": "Let me"}],
        [{"role": "assistant", "content": " check."}],
        [], [], [],  # the tool call's pieces, gathered
        [{"role": "assistant", "content": "", "tool_calls": [{"id": "call_0_ab", "function": {
            "index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]}],
    ]
    assert not any(frame["done"] for frames in per_frame[:9] for frame in frames)
    (done,) = per_frame[9]  # the usage chunk after the finish: the end
    assert (done["done"], done["done_reason"], done["prompt_eval_count"],
            done["eval_count"]) == (True, "stop", 12, 30)
    assert per_frame[10:] == [[], []]  # [DONE], and nothing owed at the end


def test_stream_then_anthropic_events():
    """DeepSeek's stream through the reader and Anthropic's translator: the client gets
    a thinking block, a text block and a tool_use block, piece by piece."""
    surface = Anthropic()
    call = surface.request({"model": "deepseek-reasoner", "max_tokens": 100, "stream": True,
                            "messages": [{"role": "user", "content": "Weather?"}]}, {})
    translator = surface.translator(call)
    events = [[(event.event.decode(), event.data) for frame in frames
               for event in translator.frame(frame)] for frames in read(DEEPSEEK_STREAM)]
    names = [[name for name, _ in step] for step in events]
    assert names[:5] == [
        [],
        ["message_start", "content_block_start", "content_block_delta"],
        ["content_block_delta"],
        ["content_block_stop", "content_block_start", "content_block_delta"],
        ["content_block_delta"]]
    assert [data["delta"] for name, data in events[1] + events[2] + events[3] + events[4]
            if name == "content_block_delta"] == [
        {"type": "thinking_delta", "thinking": "The user"},
        {"type": "thinking_delta", "thinking": " wants weather."},
        {"type": "text_delta", "text": "Let me"}, {"type": "text_delta", "text": " check."}]
    tool = dict(events[8])
    assert tool["content_block_start"]["content_block"] == {
        "type": "tool_use", "id": "call_0_ab", "name": "get_weather", "input": {}}
    assert tool["content_block_delta"]["delta"] == {"type": "input_json_delta",
                                                    "partial_json": '{"city":"Paris"}'}
    end = dict(events[9])
    assert end["message_delta"]["delta"]["stop_reason"] == "tool_use"
    assert end["message_delta"]["usage"] == {"input_tokens": 12, "output_tokens": 30}
    assert "message_stop" in end


def test_stream_then_openai_chunks():
    """The same stream read and written again as chat chunks (what an Anthropic upstream's
    stream becomes for an OpenAI client): reasoning in both fields, role first only."""
    call = chat(messages=hello(), stream=True, stream_options={"include_usage": True})
    translator = CHAT_WIRE.translator(call)
    out = [[frame.data if not frame.is_done else "[DONE]" for canonical in frames
            for frame in translator.frame(canonical)] for frames in read(DEEPSEEK_STREAM)]
    deltas = [[chunk["choices"][0]["delta"] for chunk in step] for step in out[:9]]
    assert deltas[:5] == [
        [], [{"role": "assistant", "content": "", "reasoning": "The user",
              "reasoning_content": "The user"}],
        [{"content": "", "reasoning": " wants weather.", "reasoning_content": " wants weather."}],
        [{"content": "Let me"}], [{"content": " check."}]]
    (calls,) = deltas[8]
    assert calls["tool_calls"] == [{"id": "call_0_ab", "index": 0, "type": "function",
                                    "function": {"name": "get_weather",
                                                 "arguments": '{"city":"Paris"}'}}]
    finish, usage, done = out[9]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 42
    assert done == "[DONE]"
    ids = {chunk["id"] for step in out for chunk in step if chunk != "[DONE]"}
    assert ids == {f"chatcmpl-{call.ids[0]}"}


@pytest.mark.parametrize("shape", ["legacy", "new", "nulls"])
@pytest.mark.parametrize("mode", ["field", "reasoning_content"])
def test_reader_reads_every_openai_stream_shape(shape, mode):
    """The stand-in's OpenAI streams (Ollama's old and new shapes, vLLM's nulls; Ollama's
    `reasoning` and DeepSeek's `reasoning_content`): one canonical frame per piece."""
    gen = wire.generate("tell me about Paris", 1, mode, None, 9)
    stream = b"".join(raw for raw, _ in wire.openai_chat_frames(gen, "m", shape, True))
    frames = [frame for frames in read(stream, {"model": "m"}) for frame in frames]
    *pieces, done = frames
    assert len(pieces) == len(gen.pieces)
    assert "".join(frame["message"].get("thinking", "") for frame in pieces) == gen.text(
        "reasoning")
    assert "".join(frame["message"]["content"] for frame in pieces) == gen.text("content")
    assert (done["done"], done["eval_count"]) == (True, gen.completion_tokens)


def test_done_at_done_marker_without_usage_and_at_end_without_it():
    finish = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},'
              b'"finish_reason":"length"}]}\n\n')
    per_frame = read(finish + b"data: [DONE]\n\n", pieces=1000)
    assert [frame["done"] for frame in per_frame[0]] == [False]
    (done,) = per_frame[1]
    assert done["done_reason"] == "length" and "eval_count" not in done
    (owed,) = read(finish, pieces=1000)[-1]  # no [DONE]: the finished choice still ends
    assert owed["done"] is True
    assert read(b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n')[-1] == []


def test_in_band_error_and_comments():
    stream = (b": keep-alive\n\n" + b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
              + b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n')
    per_frame = read(stream, pieces=1000)
    assert per_frame[0] == [] and per_frame[2] == [{"error": "overloaded"}]
    named = b'event: error\ndata: {"message":"rate limited","type":"error"}\n\n'
    assert read(named, pieces=1000)[0] == [{"error": "rate limited"}]


def test_translator_like_ollamas_chat_writer():  # middleware/openai_test.go's stream cases
    translator = CHAT_WIRE.translator(chat(messages=hello(), stream=True))

    def native_frame(done=False, **message):
        frame = {"model": "test-model", "created_at": "2025-01-01T00:00:00Z",
                 "message": {"role": "assistant", "content": "", **message}, "done": done}
        return {**frame, "done_reason": "length", "eval_count": 3} if done else frame
    mixed = [frame.data for frame in translator.frame(native_frame(thinking="t", content="c"))]
    assert [chunk["choices"][0]["delta"] for chunk in mixed] == [  # split, role first only
        {"role": "assistant", "reasoning": "t", "reasoning_content": "t"}, {"content": "c"}]
    end = translator.frame(native_frame(done=True))  # the empty trailer: no content chunk
    assert [frame.data["choices"] if frame.data else frame.raw for frame in end] == [
        [{"index": 0, "delta": {}, "finish_reason": "length"}], b"[DONE]"]  # no usage asked
    empty = CHAT_WIRE.translator(chat(messages=hello(), stream=True))
    first, finish, done = empty.frame(native_frame(done=True))  # an empty completion
    assert first.data["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert done.is_done
    (failed,) = empty.failed(500, "boom")
    assert failed.data["error"]["message"] == "boom"


def test_whole_answer_as_the_one_frame_of_a_stream():
    """An upstream that answered a stream request whole: its canonical answer, one frame,
    is the whole stream (reasoning, text, finish, usage, [DONE])."""
    call = chat(messages=hello(), stream=True, stream_options={"include_usage": True})
    whole = KIND.whole(CHAT, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Hi!", "reasoning_content": "Greet"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}}, {"model": "m"})
    reasoning, text, finish, usage, done = CHAT_WIRE.translator(call).frame(whole)
    assert reasoning.data["choices"][0]["delta"] == {
        "role": "assistant", "reasoning": "Greet", "reasoning_content": "Greet"}
    assert text.data["choices"][0]["delta"] == {"content": "Hi!"}
    assert finish.data["choices"][0]["finish_reason"] == "stop"
    assert usage.data["usage"] == {"prompt_tokens": 3, "completion_tokens": 2,
                                   "total_tokens": 5}
    assert done.is_done


# ------------------------------------------------------------------ /v1/completions


COMPLETIONS = OpenAICompletions()


def test_completion_request_is_one_user_message():  # TestFromCompleteRequest_Basic
    call = COMPLETIONS.request({"model": "test-model", "prompt": "Hello", "temperature": 0.8,
                                "max_tokens": 16, "logprobs": 2, "stream": True,
                                "stream_options": {"include_usage": True}}, {})
    assert call.native == {"model": "test-model", "stream": True,
                           "messages": [{"role": "user", "content": "Hello"}],
                           "options": {"temperature": 0.8, "num_predict": 16},
                           "logprobs": True, "top_logprobs": 2}


@pytest.mark.parametrize(("change", "param"), [
    ({"suffix": "end"}, "suffix"), ({"echo": True}, "echo"), ({"best_of": 3}, "best_of"),
    ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": [1, 2, 3]}, "prompt"), ({"n": 2}, "n")])
def test_unsupported_completion_fields_are_named(change, param):
    with pytest.raises(Unsupported) as refused:
        COMPLETIONS.request({"model": "m", "prompt": "Hello", **change}, {})
    assert refused.value.param == param


def test_completion_answers_whole_and_streamed():
    call = COMPLETIONS.request({"model": "m", "prompt": "Hi", "stream": True,
                                "stream_options": {"include_usage": True}}, {})
    entries = [{"token": "Hel", "logprob": -0.5, "top_logprobs": [
        {"token": "Hel", "logprob": -0.5}]}, {"token": "lo", "logprob": -0.1}]
    body = COMPLETIONS.body({"model": "m", "message": {"content": "Hello", "thinking": "x"},
                             "done": True, "done_reason": "stop", "logprobs": entries,
                             "prompt_eval_count": 2, "eval_count": 2}, call)
    assert body["object"] == "text_completion" and body["id"] == f"cmpl-{call.ids[0]}"
    assert body["choices"] == [{"text": "Hello", "index": 0, "finish_reason": "stop",
                                "logprobs": {"tokens": ["Hel", "lo"],
                                             "token_logprobs": [-0.5, -0.1],
                                             "top_logprobs": [{"Hel": -0.5}, {}],
                                             "text_offset": [0, 3]}}]
    translator = COMPLETIONS.translator(call)
    thinking = translator.frame({"model": "m", "message": {"content": "", "thinking": "x"},
                                 "done": False})
    text = translator.frame({"model": "m", "message": {"content": "Hello"}, "done": False})
    end = translator.frame({"model": "m", "message": {"content": ""}, "done": True,
                            "done_reason": "length", "prompt_eval_count": 2, "eval_count": 1})
    assert [chunk.data["choices"][0]["text"] for chunk in thinking + text] == ["", "Hello"]
    last, usage, done = end
    assert last.data["choices"][0]["finish_reason"] == "length"
    assert usage.data["usage"] == {"prompt_tokens": 2, "completion_tokens": 1,
                                   "total_tokens": 3}
    assert done.raw == b"[DONE]"


# ------------------------------------------------------------------ embeddings


EMBEDDINGS = OpenAIEmbeddings()


def test_embedding_request_and_base64_answer():  # TestEmbeddingsMiddleware
    call = EMBEDDINGS.request({"model": "all-minilm", "input": ["a", "b"],
                               "encoding_format": "base64", "dimensions": 4, "user": "u"}, {})
    assert call.native == {"model": "all-minilm", "input": ["a", "b"], "dimensions": 4}
    assert EMBEDDINGS.request({"model": "m", "input": ""}, {}).native["input"] == [""]
    body = EMBEDDINGS.body({"model": "all-minilm", "embeddings": [[0.5, -1.0], [0.25, 2.0]],
                            "prompt_eval_count": 8}, call)
    assert [struct.unpack("<2f", base64.b64decode(item["embedding"]))
            for item in body["data"]] == [(0.5, -1.0), (0.25, 2.0)]
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    floats = EMBEDDINGS.body({"embeddings": [[0.5]]}, EMBEDDINGS.request(
        {"model": "m", "input": "a"}, {}))
    assert floats["data"] == [{"object": "embedding", "embedding": [0.5], "index": 0}]


def test_embedding_refusals():
    with pytest.raises(BadRequest) as refused:
        EMBEDDINGS.request({"model": "m", "input": "a", "encoding_format": "int8"}, {})
    assert refused.value.param == "encoding_format"
    with pytest.raises(BadRequest, match="invalid input"):
        EMBEDDINGS.request({"model": "m", "input": []}, {})
    with pytest.raises(Unsupported) as unsupported:
        EMBEDDINGS.request({"model": "m", "input": [[1, 2, 3]]}, {})
    assert unsupported.value.param == "input"


def test_embeddings_from_an_openai_upstream():
    out = KIND.outbound(EMBED, {"model": "text-embedding-3-small", "input": ["a", "b"],
                                "truncate": True, "keep_alive": "5m", "dimensions": 2})
    assert (out.method, out.path, out.body) == ("POST", "/v1/embeddings", {
        "model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 2})
    packed = base64.b64encode(struct.pack("<2f", 0.5, 1.5)).decode()
    got = KIND.whole(EMBED, {"object": "list", "model": "text-embedding-3-small", "data": [
        {"object": "embedding", "index": 1, "embedding": packed},
        {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4}}, {"model": "text-embedding-3-small"})
    assert got == {"model": "text-embedding-3-small", "embeddings": [[0.1, 0.2], [0.5, 1.5]],
                   "prompt_eval_count": 4}


def test_a_broken_base64_embedding_is_no_vector():  # not an exception (a 500)
    got = KIND.whole(EMBED, {"data": [{"index": 0, "embedding": "abc"},
                                      {"index": 1, "embedding": "MTIzNDU="}]}, {"model": "e"})
    assert got["embeddings"] == [[], []]


# ------------------------------------------------------------------ models


def test_model_list_round_trips():  # the wire-format reference's /v1/models and /api/tags
    listing = {"object": "list", "data": [
        {"id": "deepseek-chat", "object": "model", "created": 1746401864,
         "owned_by": "library"},
        {"id": "user/custom:7b", "object": "model", "created": 1746401900, "owned_by": "user"}]}
    assert (KIND.outbound(MODELS, {}).method, KIND.outbound(MODELS, {}).path) == (
        "GET", "/v1/models")
    tags = KIND.whole(MODELS, listing, {})
    assert [(tag["name"], tag["model"]) for tag in tags["models"]] == [
        ("deepseek-chat", "deepseek-chat"), ("user/custom:7b", "user/custom:7b")]
    assert OpenAIModels().body(tags, OpenAIModels().request({}, {})) == listing
    assert KIND.whole(MODELS, {"object": "list", "data": None}, {}) == {"models": []}


def test_show_from_an_openai_upstream():
    out = KIND.outbound(SHOW, {"model": "deepseek-chat"})
    assert (out.method, out.path, out.body) == ("GET", "/v1/models/deepseek-chat", None)
    shown = KIND.whole(SHOW, {"id": "deepseek-chat", "object": "model", "created": 1,
                              "owned_by": "deepseek"}, {"model": "deepseek-chat"})
    assert shown["capabilities"] == ["completion"] and shown["model_info"] == {}
    assert shown["details"]["format"] == ""


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(("status", "kind"), [  # TestNewError, and OpenAI's other types
    (400, "invalid_request_error"), (404, "not_found_error"), (500, "api_error"),
    (401, "authentication_error"), (429, "rate_limit_error")])
def test_error_shape(status, kind):
    for surface in (CHAT_WIRE, COMPLETIONS, EMBEDDINGS, OpenAIModels()):
        assert surface.error(status, "test message", "model") == {"error": {
            "message": "test message", "type": kind, "param": "model", "code": None}}


@pytest.mark.parametrize(("body", "message"), [
    ({"error": {"message": "Invalid API key", "type": "invalid_request_error"}},
     "Invalid API key"),
    ({"error": "model 'x' not found"}, "model 'x' not found"),
    ({"object": "error", "message": "too long", "type": "BadRequestError"}, "too long"),
    ({"detail": "Not Found"}, "Not Found"),
    ("upstream connect error", "upstream connect error"),
    ({"choices": []}, "")])
def test_upstream_error_messages(body, message):
    assert KIND.error(body) == message


def test_kind_names_its_wires_and_probe():
    assert KIND.name == "openai" and KIND.probe == "/v1/models"
    assert KIND.speaks == {("openai", endpoint) for endpoint in
                           ("chat", "completions", "embeddings", "models")}
    assert KIND.credentials("sk-1") == {"authorization": "Bearer sk-1"}
    assert Frame(b"[DONE]").is_done
