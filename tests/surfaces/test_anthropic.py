"""The Anthropic adapter alone, pinned to what Ollama's own Go tests expect of its
converter (anthropic/anthropic_test.go): request conversion, whole answers, stream
events, stop reasons and error types."""

from __future__ import annotations

import base64

import pytest

from bridge.core import streaming
from bridge.core.errors import BadRequest
from bridge.surfaces.anthropic import Anthropic, error_type, stop_reason

ADAPTER = Anthropic()
IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n fake png").decode()


def native(**request):
    return ADAPTER.request({"model": "test-model", "max_tokens": 1024, **request}, {}).native


def user(content):
    return [{"role": "user", "content": content}]


def test_basic_request():  # TestFromMessagesRequest_Basic, _WithSystemPrompt(Array), _WithOptions
    assert native(messages=user("Hello")) == {
        "model": "test-model", "messages": [{"role": "user", "content": "Hello"}],
        "stream": False, "options": {"num_predict": 1024}}
    assert native(system="Be brief.", messages=user("Hi"))["messages"][0] == {
        "role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "You are helpful."},
              {"type": "text", "text": " Be concise.", "cache_control": {"type": "ephemeral"}}]
    assert native(system=blocks, messages=user("Hi"))["messages"][0]["content"] == \
        "You are helpful. Be concise."
    options = native(messages=user("Hi"), temperature=0.7, top_p=0.9, top_k=40,
                     stop_sequences=["\n", "END"], stream=True, metadata={"user_id": "u"})
    assert options["options"] == {"num_predict": 1024, "temperature": 0.7, "top_p": 0.9,
                                  "top_k": 40, "stop": ["\n", "END"]}
    assert options["stream"] is True and "metadata" not in options


def test_images_tool_use_and_tool_results():  # _WithImage, _WithToolUse, _WithToolResult…
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": IMAGE}}
    assert native(messages=user([{"type": "text", "text": "What is this?"}, image]))[
        "messages"] == [{"role": "user", "content": "What is this?", "images": [IMAGE]}]
    messages = [
        {"role": "user", "content": "Read it"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should read.", "signature": "sig"},
            {"type": "tool_use", "id": "call_read", "name": "Read",
             "input": {"file_path": "/tmp/a.png"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_read", "content": [
                {"type": "text", "text": "Attached image"}, image]},
            {"type": "text", "text": "Please describe it."}]},
    ]
    assert native(messages=messages)["messages"] == [
        {"role": "user", "content": "Read it"},
        {"role": "assistant", "content": "", "thinking": "I should read.",
         "tool_calls": [{"id": "call_read", "function": {
             "name": "Read", "arguments": {"file_path": "/tmp/a.png"}}}]},
        {"role": "tool", "content": "Attached image", "images": [IMAGE],
         "tool_call_id": "call_read"},
        {"role": "user", "content": "Please describe it."},
    ]


def test_tools_tool_choice_and_thinking():  # _WithTools, _WithThinking, _WithOutputConfig…
    tool = {"name": "get_weather", "description": "Get the weather",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                             "required": ["location"]}}
    assert native(messages=user("Hi"), tools=[tool])["tools"] == [{
        "type": "function", "function": {"name": "get_weather",
                                         "description": "Get the weather",
                                         "parameters": tool["input_schema"]}}]
    assert "tools" not in native(messages=user("Hi"), tools=[tool],
                                 tool_choice={"type": "none"})
    searching = native(messages=user("Hi"), tools=[
        {"type": "web_search_20250305", "name": "web_search"},
        {"name": "web_search", "input_schema": {"type": "object"}}])["tools"]
    assert [entry["function"]["name"] for entry in searching] == ["web_search"]
    assert native(messages=user("Hi"), thinking={"type": "enabled",
                                                  "budget_tokens": 1000})["think"] is True
    assert native(messages=user("Hi"), thinking={"type": "disabled"},
                  output_config={"effort": "high"})["think"] is False
    assert native(messages=user("Hi"), output_config={"effort": "xhigh"})["think"] == "high"
    assert native(messages=user("Hi"), thinking={"type": "adaptive"},
                  output_config={"effort": "low"})["think"] == "low"
    assert "think" not in native(messages=user("Hi"))


@pytest.mark.parametrize(("request_", "message"), [
    ({"max_tokens": 10, "messages": user("x")}, "model is required"),
    ({"model": "m", "messages": user("x")}, "max_tokens is required and must be positive"),
    ({"model": "m", "max_tokens": 10, "messages": []}, "messages is required"),
    ({"model": "m", "max_tokens": 10, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "name": "f", "input": {}}]}]},
     "tool_use block missing required 'id' field"),
    ({"model": "m", "max_tokens": 10, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "input": {}}]}]},
     "tool_use block missing required 'name' field"),
    ({"model": "m", "max_tokens": 10, "messages": user([{"type": "image", "source": {
        "type": "url", "url": "https://example.com/a.png"}}])},
     "invalid image source type: url. Only base64 images are supported."),
    ({"model": "m", "max_tokens": 10, "messages": user("x"), "tools": [
        {"name": "f", "input_schema": "not an object"}]},
     "invalid input_schema for tool 'f': not an object"),
])
def test_what_the_native_chat_cannot_express_is_a_400(request_, message):
    with pytest.raises(BadRequest) as refused:
        ADAPTER.request(request_, {})
    assert refused.value.message == message


def call(stream=False):
    return ADAPTER.request({"model": "test-model", "max_tokens": 100, "stream": stream,
                            "messages": user("Hi")}, {})


def test_whole_answers():  # TestToMessagesResponse_*
    made = call()
    body = ADAPTER.body({"model": "test-model", "message": {
        "role": "assistant", "content": "The answer is 42.",
        "thinking": "Let me think about this..."}, "done": True, "done_reason": "stop",
        "prompt_eval_count": 10, "eval_count": 5}, made)
    assert body == {"id": made.ids[0], "type": "message", "role": "assistant",
                    "model": "test-model", "content": [
                        {"type": "thinking", "thinking": "Let me think about this..."},
                        {"type": "text", "text": "The answer is 42."}],
                    "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 5}}
    assert body["id"].startswith("msg_") and body["id"] != call().ids[0]
    tools = ADAPTER.body({"model": "test-model", "message": {"role": "assistant", "content": "",
                         "tool_calls": [{"id": "call_123", "function": {
                             "name": "get_weather", "arguments": {"location": "Paris"}}}]},
                          "done": True, "done_reason": "stop"}, made)
    assert tools["content"] == [{"type": "tool_use", "id": "call_123", "name": "get_weather",
                                 "input": {"location": "Paris"}}]
    assert tools["stop_reason"] == "tool_use"


def test_stop_reasons_and_error_types():  # TestMapStopReason, TestNewError
    assert [stop_reason(reason, tools) for reason, tools in (
        ("stop", False), ("length", False), ("stop", True), ("other", False), ("", False),
        (["length"], False))] \
        == ["end_turn", "max_tokens", "tool_use", "stop_sequence", None, "stop_sequence"]
    assert [error_type(status) for status in (400, 401, 403, 404, 429, 500, 503, 529, 413,
                                              408)] == [
        "invalid_request_error", "authentication_error", "permission_error",
        "not_found_error", "rate_limit_error", "api_error", "overloaded_error",
        "overloaded_error", "request_too_large", "invalid_request_error"]
    assert ADAPTER.error(429, "slow down") == {
        "type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


def events(frames_of_chunks):
    """`event:index` labels as Ollama's TestStreamConverter_TextBeforeThinking writes them."""
    labels = []
    for frame in frames_of_chunks:
        data = frame.data
        kind = data["type"]
        if kind == "content_block_start":
            labels.append(f"{kind}:{data['content_block']['type']}:{data['index']}")
        elif kind == "content_block_delta":
            labels.append(f"{kind}:{data['delta']['type']}:{data['index']}")
        elif kind == "content_block_stop":
            labels.append(f"{kind}:{data['index']}")
        else:
            labels.append(kind)
        assert frame.event == kind.encode()  # the SSE event line names the data's type
    return labels


def translate(chunks):
    translator = ADAPTER.translator(call(stream=True))
    return [frame for chunk in chunks for frame in translator.frame(chunk)]


def test_stream_text_before_thinking():  # TestStreamConverter_TextBeforeThinking
    frames = translate([
        {"message": {"role": "assistant", "content": "---\n"}},
        {"message": {"role": "assistant", "content": "", "thinking": "Let me think."}},
        {"message": {"role": "assistant", "content": "The answer."}, "done": True,
         "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5}])
    assert events(frames) == [
        "message_start", "content_block_start:text:0", "content_block_delta:text_delta:0",
        "content_block_stop:0", "content_block_start:thinking:1",
        "content_block_delta:thinking_delta:1", "content_block_stop:1",
        "content_block_start:text:2", "content_block_delta:text_delta:2",
        "content_block_stop:2", "message_delta", "message_stop"]
    assert frames[-2].data["usage"] == {"input_tokens": 10, "output_tokens": 5}
    assert frames[-2].data["delta"]["stop_reason"] == "end_turn"


def test_stream_thinking_directly_followed_by_a_tool_call():  # …ThinkingDirectlyFollowedByToolCall
    frames = translate([
        {"message": {"role": "assistant", "content": "", "thinking": "I should call it."}},
        {"message": {"role": "assistant", "content": "", "tool_calls": [{
            "id": "call_abc", "function": {"name": "ask_user",
                                           "arguments": {"question": "cats or dogs?"}}}]},
         "done": True, "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5}])
    assert events(frames) == [
        "message_start", "content_block_start:thinking:0",
        "content_block_delta:thinking_delta:0", "content_block_stop:0",
        "content_block_start:tool_use:1", "content_block_delta:input_json_delta:1",
        "content_block_stop:1", "message_delta", "message_stop"]
    assert frames[4].data["content_block"] == {"type": "tool_use", "id": "call_abc",
                                               "name": "ask_user", "input": {}}
    assert frames[5].data["delta"] == {"type": "input_json_delta",
                                       "partial_json": '{"question":"cats or dogs?"}'}
    assert frames[-2].data["delta"]["stop_reason"] == "tool_use"


def test_stream_wire_bytes_and_keep_alives():
    translator = ADAPTER.translator(call(stream=True))
    start = translator.frame({"message": {"role": "assistant", "content": ""}})
    assert [frame.data["type"] for frame in start] == ["message_start"]
    assert start[0].data["message"]["content"] == [] and \
        start[0].data["message"]["usage"]["output_tokens"] == 0
    quiet = translator.frame({"message": {"role": "assistant", "content": ""}})
    assert streaming.encode(quiet[0], streaming.SSE) == \
        b'event: ping\ndata: {"type":"ping"}\n\n'
    failed = translator.failed(500, "llama runner process has terminated")
    assert streaming.encode(failed[0], streaming.SSE) == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":'
        b'"llama runner process has terminated"}}\n\n')
