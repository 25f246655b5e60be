"""The official `anthropic` client in front of an OpenAI-only upstream (DeepSeek-like,
reasoning in `reasoning_content`), through a real bridge that translates the Messages
API into chat completions and back: messages whole and streamed (as they arrive),
tools with a tool result turn, and thinking blocks from DeepSeek's reasoning when
thinking is asked, none otherwise — `-o --upstream-api openai` and an upstreams file."""

from __future__ import annotations

import json

from crossing_helpers import (
    HI,
    TOOLS_ANTHROPIC,
    VERSION,
    WORDS,
    anthropic_client,
    first_event_while_upstream_sends,
    legs_of,
    no_native_calls,
)

from bridge.ollama_standin.wire import answer_text, reasoning_text

pytestmark = legs_of("openai")


def test_message_is_answered_through_chat_completions(leg):
    message = anthropic_client(leg).messages.create(
        model="llama3.2", max_tokens=64, system="Be brief.", messages=HI, temperature=0.3,
        stop_sequences=["END"])
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "llama3.2"
    assert [(block.type, block.text) for block in message.content] == [
        ("text", answer_text("hi", 2))]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    [call] = leg.model_calls()
    assert call.path == "/v1/chat/completions"
    sent = call.json()
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, *HI]
    assert sent["temperature"] == 0.3 and sent["stop"] == ["END"]
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 64
    no_native_calls(leg)


def test_stream_gives_anthropics_events(leg):
    with anthropic_client(leg).messages.stream(model="llama3.2", max_tokens=64,
                                                      messages=HI) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_delta") > 1
    assert {"content_block_start", "content_block_stop", "message_delta"} <= set(kinds)
    assert [(block.type, block.text) for block in final.content] == [
        ("text", answer_text("hi", 1))]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert leg.sent()["stream"] is True
    no_native_calls(leg)


def test_translated_stream_is_progressive(leg):
    first = first_event_while_upstream_sends(
        leg.url + "/v1/messages",
        {"model": "llama3.2", "max_tokens": 100, "stream": True,
         "messages": [{"role": "user", "content": WORDS}]}, leg.upstream, VERSION)
    assert first == b"event: message_start"


def test_tool_use_and_the_tool_result_turn(leg):
    client = anthropic_client(leg)
    asked = [{"role": "user", "content": "cats"}]
    message = client.messages.create(model="qwen2.5", max_tokens=64, tools=TOOLS_ANTHROPIC,
                                     messages=asked)
    assert message.stop_reason == "tool_use"
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert (use.name, use.input) == ("lookup", {"term": "cats"})
    [tool] = leg.sent()["tools"]
    assert tool["type"] == "function" and tool["function"]["name"] == "lookup"
    assert tool["function"]["parameters"]["required"] == ["term"]
    with client.messages.stream(model="qwen2.5", max_tokens=64, tools=TOOLS_ANTHROPIC,
                                messages=asked) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [(block.name, block.input) for block in streamed.content
            if block.type == "tool_use"] == [("lookup", {"term": "cats"})]
    after = client.messages.create(model="qwen2.5", max_tokens=64, tools=TOOLS_ANTHROPIC,
                                   messages=[*asked,
                                             {"role": "assistant", "content": [use.model_dump()]},
                                             {"role": "user", "content": [{
                                                 "type": "tool_result", "tool_use_id": use.id,
                                                 "content": "a small feline"}]}])
    assert after.stop_reason == "end_turn" and after.content[0].type == "text"
    messages = leg.sent()["messages"]
    [assistant] = [m for m in messages if m["role"] == "assistant"]
    [call] = assistant["tool_calls"]
    assert call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"term": "cats"}
    [result] = [m for m in messages if m["role"] == "tool"]
    assert result["tool_call_id"] == call["id"] and result["content"] == "a small feline"


def test_thinking_blocks_come_from_reasoning_content_when_asked(leg):
    client = anthropic_client(leg)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    message = client.messages.create(model="deepseek-r1:7b", max_tokens=400, messages=HI,
                                     thinking=thinking)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == reasoning_text("hi")
    assert message.content[1].text == answer_text("hi", 1)
    with client.messages.stream(model="deepseek-r1:7b", max_tokens=400, messages=HI,
                                thinking=thinking) as stream:
        deltas = {event.delta.type for event in stream if event.type == "content_block_delta"}
        final = stream.get_final_message()
    assert deltas == {"thinking_delta", "text_delta"}
    assert final.content[0].thinking == reasoning_text("hi")
    assert final.content[1].text == answer_text("hi", 1)


def test_thinking_is_hidden_unless_asked(leg):
    client = anthropic_client(leg)
    for extra in ({}, {"thinking": {"type": "disabled"}}):
        message = client.messages.create(model="deepseek-r1:7b", max_tokens=400,
                                         messages=HI, **extra)
        assert [(block.type, block.text) for block in message.content] == [
            ("text", answer_text("hi", 1))], extra
        with client.messages.stream(model="deepseek-r1:7b", max_tokens=400, messages=HI,
                                    **extra) as stream:
            deltas = {event.delta.type for event in stream
                      if event.type == "content_block_delta"}
            final = stream.get_final_message()
        assert deltas == {"text_delta"}
        assert [block.type for block in final.content] == ["text"]
        assert reasoning_text("hi") not in final.content[0].text
