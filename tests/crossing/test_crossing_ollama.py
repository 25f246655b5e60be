"""An Ollama-native client (the official `ollama` client) in front of an OpenAI-only
upstream (DeepSeek-like: no `/api/*`, reasoning in `reasoning_content`) and in front of
Claude's API only (`/v1/messages`, `/v1/models`; `x-api-key`, `anthropic-version`),
through a real bridge that translates every native call into the upstream's API and
back: chat, streams as they arrive, generate, embed (a clear 400 where the kind has no
embeddings), tools with a tool result turn, options, reasoning, the model list and a
model's description — each upstream named by `-o --upstream-api` and by a file."""

from __future__ import annotations

import json

import ollama
import pytest
from crossing_helpers import (
    HI,
    TOOLS_OLLAMA,
    WORDS,
    Leg,
    asked,
    created,
    first_event_while_upstream_sends,
    headers_of,
    legs_of,
    names,
    no_native_calls,
    ollama_client,
)

from bridge.ollama_standin.wire import answer_text, embedding, reasoning_text

SYSTEM = "Be brief."
CHAT_PATH = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


def sent_tool_call(leg: Leg, messages: list[dict]) -> tuple[str, dict, str]:
    """(name, arguments, id) of the tool call in the assistant turn the upstream got."""
    if leg.kind == "openai":
        [assistant] = [m for m in messages if m["role"] == "assistant"]
        [call] = assistant["tool_calls"]
        return (call["function"]["name"], json.loads(call["function"]["arguments"]),
                call["id"])
    [use] = [block for m in messages if m["role"] == "assistant" for block in m["content"]
             if block["type"] == "tool_use"]
    return use["name"], use["input"], use["id"]


def sent_tool_result(leg: Leg, messages: list[dict]) -> tuple[str, str]:
    """(the id it answers, its text) of the tool result the upstream got."""
    if leg.kind == "openai":
        [result] = [m for m in messages if m["role"] == "tool"]
        return result.get("tool_call_id"), result["content"]
    [result] = [block for m in messages if m["role"] == "user" and isinstance(m["content"], list)
                for block in m["content"] if block["type"] == "tool_result"]
    return result["tool_use_id"], json.dumps(result["content"])


def test_chat_is_answered_through_the_upstreams_api(leg):
    answer = ollama_client(leg).chat(model="llama3.2", messages=[
        {"role": "system", "content": SYSTEM}, *HI])
    assert answer.message.role == "assistant"
    assert answer.message.content == answer_text("hi", 2)
    assert answer.done and answer.done_reason == "stop"
    assert answer.prompt_eval_count > 0 and answer.eval_count > 0
    [call] = leg.model_calls()
    assert call.method == "POST" and call.path == CHAT_PATH[leg.kind]
    sent = call.json()
    assert sent["model"] == "llama3.2"
    if leg.kind == "openai":
        assert sent["messages"] == [{"role": "system", "content": SYSTEM}, *HI]
    else:
        assert headers_of(call)["anthropic-version"] and sent["max_tokens"] > 0
        assert sent["system"] in (SYSTEM, [{"type": "text", "text": SYSTEM}])
        assert [message["role"] for message in sent["messages"]] == ["user"]
    no_native_calls(leg)


@legs_of("openai")
def test_options_become_openais_fields(leg):
    ollama_client(leg).chat(model="llama3.2", messages=HI, options={
        "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["\n\n"], "num_predict": 64,
        "num_ctx": 8192})  # num_ctx: a runtime option, harmless to drop
    sent = leg.sent()
    assert (sent["temperature"], sent["top_p"], sent["seed"]) == (0.2, 0.9, 7)
    assert sent["stop"] == ["\n\n"]
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 64
    assert "num_ctx" not in json.dumps(sent)


@legs_of("anthropic")
def test_options_become_the_messages_fields(leg):
    ollama_client(leg).chat(model="llama3.2", messages=HI, options={
        "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop": ["END"], "num_predict": 64,
        "num_ctx": 8192})
    sent = leg.sent()
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.2, 0.9, 40)
    assert sent["stop_sequences"] == ["END"] and sent["max_tokens"] == 64
    assert "num_ctx" not in json.dumps(sent)


def test_stream_arrives_chunk_by_chunk(leg):
    chunks = list(ollama_client(leg).chat(model="llama3.2", messages=HI, stream=True))
    assert len(chunks) > 2
    assert "".join(chunk.message.content for chunk in chunks) == answer_text("hi", 1)
    assert [chunk.done for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].done_reason == "stop" and chunks[-1].eval_count > 0
    assert leg.sent()["stream"] is True
    no_native_calls(leg)


def test_translated_stream_is_progressive(leg):
    first = first_event_while_upstream_sends(
        leg.url + "/api/chat", {"model": "llama3.2", "stream": True,
                                "messages": [{"role": "user", "content": WORDS}]},
        leg.upstream)
    frame = json.loads(first)
    assert frame["done"] is False and frame["message"]["role"] == "assistant"


def test_generate_and_its_stream(leg):
    client = ollama_client(leg)
    whole = client.generate(model="llama3.2", prompt="hi")
    assert whole.response == answer_text("hi", 1) and whole.done_reason == "stop"
    streamed = list(client.generate(model="llama3.2", prompt="hi", stream=True))
    assert "".join(chunk.response for chunk in streamed) == answer_text("hi", 1)
    assert streamed[-1].done and streamed[-1].eval_count > 0
    with_system = client.generate(model="llama3.2", prompt="hi", system=SYSTEM)
    assert with_system.response == answer_text("hi", 2)  # the system prompt, then the user
    assert [call.path for call in leg.model_calls()] == [CHAT_PATH[leg.kind]] * 3
    no_native_calls(leg)


@legs_of("openai")
def test_generate_suffix_is_refused_naming_the_field_and_the_upstream(leg):
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client(leg).generate(model="llama3.2", prompt="def f(", suffix=")")
    assert refused.value.status_code == 400
    assert names(refused.value.error, "suffix", "openai")
    assert leg.model_calls() == []


@legs_of("openai")
def test_embed_uses_the_openai_embeddings(leg):
    answer = ollama_client(leg).embed(model="all-minilm", input=["a", "b"])
    assert [list(vector) for vector in answer.embeddings] == [embedding("a"), embedding("b")]
    [call] = leg.model_calls()
    assert call.path == "/v1/embeddings" and call.json()["input"] == ["a", "b"]
    no_native_calls(leg)


@legs_of("anthropic")
def test_embed_is_refused_naming_the_upstream(leg):
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client(leg).embed(model="all-minilm", input=["a"])
    assert refused.value.status_code == 400
    assert names(refused.value.error, "anthropic") and "embed" in refused.value.error.lower()
    no_native_calls(leg)


@legs_of("anthropic")
def test_json_format_is_refused_naming_the_field_and_the_upstream(leg):
    for form in ("json", {"type": "object", "properties": {"a": {"type": "string"}}}):
        with pytest.raises(ollama.ResponseError) as refused:
            ollama_client(leg).chat(model="llama3.2", messages=HI, format=form)
        assert refused.value.status_code == 400
        assert names(refused.value.error, "format", "anthropic")
    assert leg.model_calls() == []


def test_tool_call_and_the_tool_result_turn(leg):
    client = ollama_client(leg)
    asked_first = [{"role": "user", "content": "cats"}]
    answer = client.chat(model="qwen2.5", messages=asked_first, tools=TOOLS_OLLAMA)
    [call] = answer.message.tool_calls
    assert call.function.name == "lookup" and call.function.arguments == {"term": "cats"}
    [tool] = leg.sent()["tools"]
    assert (tool["function"]["name"] if leg.kind == "openai" else tool["name"]) == "lookup"
    streamed = list(client.chat(model="qwen2.5", messages=asked_first, tools=TOOLS_OLLAMA,
                                stream=True))
    calls = [tool for chunk in streamed for tool in (chunk.message.tool_calls or [])]
    assert [(tool.function.name, tool.function.arguments) for tool in calls] == [
        ("lookup", {"term": "cats"})]  # whole, once, however its arguments came
    after = client.chat(model="qwen2.5", tools=TOOLS_OLLAMA, messages=[
        *asked_first, {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        {"role": "tool", "content": "a small feline", "tool_name": "lookup"}])
    assert after.message.content and not after.message.tool_calls
    messages = leg.sent()["messages"]
    name, arguments, ident = sent_tool_call(leg, messages)
    assert (name, arguments) == ("lookup", {"term": "cats"})
    answers, text = sent_tool_result(leg, messages)
    assert answers == ident and "a small feline" in text


@legs_of("openai")
def test_thinking_asked_comes_from_reasoning_content(leg):
    client = ollama_client(leg)
    thought = client.chat(model="deepseek-r1:7b", messages=HI, think=True)
    assert thought.message.thinking == reasoning_text("hi")
    assert thought.message.content == answer_text("hi", 1)
    chunks = list(client.chat(model="deepseek-r1:7b", messages=HI, think=True, stream=True))
    assert "".join(chunk.message.thinking or "" for chunk in chunks) == reasoning_text("hi")
    assert "".join(chunk.message.content for chunk in chunks) == answer_text("hi", 1)


def test_list_and_show_come_from_the_upstreams_models(leg):
    client = ollama_client(leg)
    names_listed = [model.model for model in client.list().models]
    assert "qwen3:latest" in names_listed and "all-minilm:latest" in names_listed
    assert leg.upstream.count("/v1/models") >= 1
    shown = client.show("qwen3:latest")
    assert "completion" in shown.capabilities
    assert shown.modified_at == created("qwen3:latest")  # the upstream's own date
    assert asked(leg.upstream, "/v1/models/qwen3:latest") >= 1
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("no-such-model")
    assert missing.value.status_code == 404
    no_native_calls(leg)
