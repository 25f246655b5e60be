"""The official `openai` client in front of Claude's API only, through a real bridge that
translates the OpenAI API into the Messages API and back: chat completions whole and
streamed (as they arrive), tools with a tool result turn, the Responses API and the
model list; what Claude's API cannot express is a 400 naming the field and the
upstream — `-o --upstream-api anthropic` and an upstreams file."""

from __future__ import annotations

import json

import openai
import pytest
from crossing_helpers import (
    HI,
    TOOLS_OPENAI,
    WORDS,
    first_event_while_upstream_sends,
    legs_of,
    names,
    no_native_calls,
    openai_client,
)

from bridge.ollama_standin.wire import answer_text

pytestmark = legs_of("anthropic")


def test_chat_completion_is_answered_through_the_messages_api(leg):
    answer = openai_client(leg).chat.completions.create(
        model="llama3.2", messages=[{"role": "system", "content": "Be brief."}, *HI],
        max_tokens=64, temperature=0.3, stop=["END"])
    assert answer.object == "chat.completion" and answer.model == "llama3.2"
    [choice] = answer.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == answer_text("hi", 2)
    assert choice.finish_reason == "stop"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert answer.usage.total_tokens == (answer.usage.prompt_tokens
                                         + answer.usage.completion_tokens)
    sent = leg.sent()
    assert sent["max_tokens"] == 64 and sent["temperature"] == 0.3
    assert sent["stop_sequences"] == ["END"]
    assert sent["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    no_native_calls(leg)


def test_stream_gives_openais_chunks(leg):
    stream = openai_client(leg).chat.completions.create(
        model="llama3.2", messages=HI, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 1
    assert "".join(pieces) == answer_text("hi", 1)
    reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({chunk.id for chunk in chunks}) == 1
    assert leg.sent()["stream"] is True
    no_native_calls(leg)


def test_translated_stream_is_progressive(leg):
    first = first_event_while_upstream_sends(
        leg.url + "/v1/chat/completions",
        {"model": "llama3.2", "stream": True,
         "messages": [{"role": "user", "content": WORDS}]}, leg.upstream)
    assert first.startswith(b"data: ")
    assert json.loads(first[6:])["object"] == "chat.completion.chunk"


def test_tool_call_and_the_tool_result_turn(leg):
    client = openai_client(leg)
    asked = [{"role": "user", "content": "cats"}]
    answer = client.chat.completions.create(model="qwen2.5", messages=asked, tools=TOOLS_OPENAI)
    [choice] = answer.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"term": "cats"}
    streamed = list(client.chat.completions.create(model="qwen2.5", messages=asked,
                                                   tools=TOOLS_OPENAI, stream=True))
    deltas = [tool for chunk in streamed if chunk.choices
              for tool in (chunk.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "lookup" and deltas[0].id
    arguments = "".join(delta.function.arguments or "" for delta in deltas)
    assert json.loads(arguments) == {"term": "cats"}
    assert [chunk.choices[0].finish_reason for chunk in streamed
            if chunk.choices and chunk.choices[0].finish_reason] == ["tool_calls"]
    after = client.chat.completions.create(model="qwen2.5", tools=TOOLS_OPENAI, messages=[
        *asked, {"role": "assistant", "content": None,
                 "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "a small feline"}])
    assert after.choices[0].finish_reason == "stop" and after.choices[0].message.content
    messages = leg.sent()["messages"]
    [use] = [block for block in messages[1]["content"] if block["type"] == "tool_use"]
    assert (use["name"], use["input"]) == ("lookup", {"term": "cats"})
    [result] = [block for block in messages[2]["content"] if block["type"] == "tool_result"]
    assert result["tool_use_id"] == use["id"]
    assert "a small feline" in json.dumps(result["content"])


def test_responses_api(leg):
    client = openai_client(leg)
    response = client.responses.create(model="llama3.2", input="hi", max_output_tokens=64)
    assert response.status == "completed"
    assert response.output_text == answer_text("hi", 1)
    assert response.usage.output_tokens > 0
    events = list(client.responses.create(model="llama3.2", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert "".join(event.delta for event in events
                   if event.type == "response.output_text.delta") == answer_text("hi", 1)
    assert [call.path for call in leg.model_calls()] == ["/v1/messages"] * 2
    no_native_calls(leg)


def test_models_list_comes_from_the_anthropic_models(leg):
    ids = [model.id for model in openai_client(leg).models.list()]
    assert "qwen3:latest" in ids and "llama3.2:latest" in ids
    assert leg.upstream.count("/v1/models") >= 1
    no_native_calls(leg)


@pytest.mark.parametrize("field, value", [
    ("response_format", {"type": "json_schema", "json_schema": {
        "name": "a", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}),
    ("logprobs", True),
    ("n", 2)])
def test_what_claude_cannot_express_is_refused_naming_it(leg, field, value):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(leg).chat.completions.create(
            model="llama3.2", messages=HI, **{field: value})
    error = refused.value.body
    assert names(error["message"], field, "anthropic") or (
        error.get("param") == field and names(error["message"], "anthropic"))
    assert leg.model_calls() == []
