"""An Ollama-native client (the official `ollama` client) in front of Claude's API only
(`/v1/messages`, `/v1/models`; `x-api-key`, `anthropic-version`), through a real bridge
that translates every native call into the Messages API and back: chat, streams as
they arrive, generate, tools with a tool result turn, the model list and a model's
description; what Claude's API cannot do (embeddings, a JSON `format`) is a clear 400
naming it — `-o --upstream-api anthropic` and an upstreams file."""

from __future__ import annotations

import json

import ollama
import pytest
from crossing_helpers import (
    TOOLS_OLLAMA,
    WORDS,
    asked,
    created,
    first_event_while_upstream_sends,
    headers_of,
    names,
    no_native_calls,
    ollama_client,
)

from bridge.ollama_standin.wire import answer_text

HI = [{"role": "user", "content": "hi"}]


def test_chat_is_answered_through_the_messages_api(anthropic_leg):
    answer = ollama_client(anthropic_leg).chat(model="llama3.2", messages=[
        {"role": "system", "content": "Be brief."}, *HI])
    assert answer.message.role == "assistant"
    assert answer.message.content == answer_text("hi", 2)
    assert answer.done and answer.done_reason == "stop"
    assert answer.prompt_eval_count > 0 and answer.eval_count > 0
    [call] = anthropic_leg.model_calls()
    assert call.method == "POST" and call.path == "/v1/messages"
    assert headers_of(call)["anthropic-version"]
    sent = call.json()
    assert sent["model"] == "llama3.2" and sent["max_tokens"] > 0
    assert sent["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert [message["role"] for message in sent["messages"]] == ["user"]
    no_native_calls(anthropic_leg)


def test_options_become_the_messages_fields(anthropic_leg):
    ollama_client(anthropic_leg).chat(model="llama3.2", messages=HI, options={
        "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop": ["END"], "num_predict": 64,
        "num_ctx": 8192})
    sent = anthropic_leg.sent()
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.2, 0.9, 40)
    assert sent["stop_sequences"] == ["END"] and sent["max_tokens"] == 64
    assert "num_ctx" not in json.dumps(sent)


def test_stream_arrives_chunk_by_chunk(anthropic_leg):
    chunks = list(ollama_client(anthropic_leg).chat(model="llama3.2", messages=HI,
                                                    stream=True))
    assert len(chunks) > 2
    assert "".join(chunk.message.content for chunk in chunks) == answer_text("hi", 1)
    assert [chunk.done for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].done_reason == "stop" and chunks[-1].eval_count > 0
    assert anthropic_leg.sent()["stream"] is True
    no_native_calls(anthropic_leg)


def test_translated_stream_is_progressive(anthropic_leg):
    first = first_event_while_upstream_sends(
        anthropic_leg.url + "/api/chat", {"model": "llama3.2", "stream": True,
                                          "messages": [{"role": "user", "content": WORDS}]},
        anthropic_leg.upstream)
    frame = json.loads(first)
    assert frame["done"] is False and frame["message"]["role"] == "assistant"


def test_generate_and_its_stream(anthropic_leg):
    client = ollama_client(anthropic_leg)
    whole = client.generate(model="llama3.2", prompt="hi")
    assert whole.response == answer_text("hi", 1) and whole.done_reason == "stop"
    streamed = list(client.generate(model="llama3.2", prompt="hi", stream=True))
    assert "".join(chunk.response for chunk in streamed) == answer_text("hi", 1)
    assert streamed[-1].done and streamed[-1].eval_count > 0
    assert [call.path for call in anthropic_leg.model_calls()] == ["/v1/messages"] * 2
    no_native_calls(anthropic_leg)


def test_embed_is_refused_naming_the_upstream(anthropic_leg):
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client(anthropic_leg).embed(model="all-minilm", input=["a"])
    assert refused.value.status_code == 400
    assert names(refused.value.error, "anthropic") and "embed" in refused.value.error.lower()
    no_native_calls(anthropic_leg)


def test_json_format_is_refused_naming_the_field_and_the_upstream(anthropic_leg):
    for form in ("json", {"type": "object", "properties": {"a": {"type": "string"}}}):
        with pytest.raises(ollama.ResponseError) as refused:
            ollama_client(anthropic_leg).chat(model="llama3.2", messages=HI, format=form)
        assert refused.value.status_code == 400
        assert names(refused.value.error, "format", "anthropic")
    assert anthropic_leg.model_calls() == []


def test_tool_call_and_the_tool_result_turn(anthropic_leg):
    client = ollama_client(anthropic_leg)
    asked = [{"role": "user", "content": "cats"}]
    answer = client.chat(model="qwen2.5", messages=asked, tools=TOOLS_OLLAMA)
    [call] = answer.message.tool_calls
    assert call.function.name == "lookup" and call.function.arguments == {"term": "cats"}
    assert anthropic_leg.sent()["tools"][0]["name"] == "lookup"
    assert anthropic_leg.sent()["tools"][0]["input_schema"]["required"] == ["term"]
    streamed = list(client.chat(model="qwen2.5", messages=asked, tools=TOOLS_OLLAMA,
                                stream=True))
    calls = [tool for chunk in streamed for tool in (chunk.message.tool_calls or [])]
    assert [(tool.function.name, tool.function.arguments) for tool in calls] == [
        ("lookup", {"term": "cats"})]  # whole, once, from Anthropic's input_json pieces
    after = client.chat(model="qwen2.5", tools=TOOLS_OLLAMA, messages=[
        *asked, {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        {"role": "tool", "content": "a small feline", "tool_name": "lookup"}])
    assert after.message.content and not after.message.tool_calls
    messages = anthropic_leg.sent()["messages"]
    [use] = [block for block in messages[1]["content"] if block["type"] == "tool_use"]
    assert (use["name"], use["input"]) == ("lookup", {"term": "cats"})
    [result] = [block for block in messages[2]["content"] if block["type"] == "tool_result"]
    assert messages[2]["role"] == "user" and result["tool_use_id"] == use["id"]
    assert "a small feline" in json.dumps(result["content"])


def test_list_and_show_come_from_the_anthropic_models(anthropic_leg):
    client = ollama_client(anthropic_leg)
    names = [model.model for model in client.list().models]
    assert "qwen3:latest" in names and "llama3.2:latest" in names
    assert anthropic_leg.upstream.count("/v1/models") >= 1
    shown = client.show("qwen3:latest")
    assert "completion" in shown.capabilities
    assert shown.modified_at == created("qwen3:latest")  # the upstream's own date
    assert asked(anthropic_leg.upstream, "/v1/models/qwen3:latest") >= 1
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("no-such-model")
    assert missing.value.status_code == 404
    no_native_calls(anthropic_leg)
