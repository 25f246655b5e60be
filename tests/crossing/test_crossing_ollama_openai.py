"""An Ollama-native client (the official `ollama` client) in front of an OpenAI-only
upstream (DeepSeek-like: no `/api/*`, reasoning in `reasoning_content`), through a real
bridge that translates every native call into the OpenAI API and back: chat, streams
as they arrive, generate, embed, tools with a tool result turn, reasoning, the model
list and a model's description — `-o --upstream-api openai` and an upstreams file."""

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
    names,
    no_native_calls,
    ollama_client,
)

from bridge.ollama_standin.wire import answer_text, embedding, reasoning_text

HI = [{"role": "user", "content": "hi"}]


def test_chat_is_answered_through_the_openai_api(openai_leg):
    answer = ollama_client(openai_leg).chat(model="llama3.2", messages=HI)
    assert answer.message.role == "assistant"
    assert answer.message.content == answer_text("hi", 1)
    assert answer.done and answer.done_reason == "stop"
    assert answer.prompt_eval_count > 0 and answer.eval_count > 0
    [call] = openai_leg.model_calls()
    assert call.path == "/v1/chat/completions"
    sent = call.json()
    assert sent["model"] == "llama3.2" and sent["messages"] == HI
    no_native_calls(openai_leg)


def test_options_become_openais_fields(openai_leg):
    ollama_client(openai_leg).chat(model="llama3.2", messages=HI, options={
        "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["\n\n"], "num_predict": 64,
        "num_ctx": 8192})  # num_ctx: a runtime option, harmless to drop
    sent = openai_leg.sent()
    assert (sent["temperature"], sent["top_p"], sent["seed"]) == (0.2, 0.9, 7)
    assert sent["stop"] == ["\n\n"]
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 64
    assert "num_ctx" not in json.dumps(sent)


def test_stream_arrives_chunk_by_chunk(openai_leg):
    chunks = list(ollama_client(openai_leg).chat(model="llama3.2", messages=HI, stream=True))
    assert len(chunks) > 2
    assert "".join(chunk.message.content for chunk in chunks) == answer_text("hi", 1)
    assert [chunk.done for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].done_reason == "stop" and chunks[-1].eval_count > 0
    assert openai_leg.sent()["stream"] is True
    no_native_calls(openai_leg)


def test_translated_stream_is_progressive(openai_leg):
    first = first_event_while_upstream_sends(
        openai_leg.url + "/api/chat", {"model": "llama3.2", "stream": True,
                                       "messages": [{"role": "user", "content": WORDS}]},
        openai_leg.upstream)
    frame = json.loads(first)
    assert frame["done"] is False and frame["message"]["role"] == "assistant"


def test_generate_and_its_stream(openai_leg):
    client = ollama_client(openai_leg)
    whole = client.generate(model="llama3.2", prompt="hi")
    assert whole.response == answer_text("hi", 1) and whole.done_reason == "stop"
    streamed = list(client.generate(model="llama3.2", prompt="hi", stream=True))
    assert "".join(chunk.response for chunk in streamed) == answer_text("hi", 1)
    assert streamed[-1].done and streamed[-1].eval_count > 0
    with_system = client.generate(model="llama3.2", prompt="hi", system="Be brief.")
    assert with_system.response == answer_text("hi", 2)  # the system prompt, then the user
    sent = openai_leg.sent()
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hi"}]
    assert [call.path for call in openai_leg.model_calls()] == ["/v1/chat/completions"] * 3
    no_native_calls(openai_leg)


def test_generate_suffix_is_refused_naming_the_field_and_the_upstream(openai_leg):
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client(openai_leg).generate(model="llama3.2", prompt="def f(", suffix=")")
    assert refused.value.status_code == 400
    assert names(refused.value.error, "suffix", "openai")
    assert openai_leg.model_calls() == []


def test_embed_uses_the_openai_embeddings(openai_leg):
    answer = ollama_client(openai_leg).embed(model="all-minilm", input=["a", "b"])
    assert [list(vector) for vector in answer.embeddings] == [embedding("a"), embedding("b")]
    [call] = openai_leg.model_calls()
    assert call.path == "/v1/embeddings" and call.json()["input"] == ["a", "b"]
    no_native_calls(openai_leg)


def test_tool_call_and_the_tool_result_turn(openai_leg):
    client = ollama_client(openai_leg)
    asked = [{"role": "user", "content": "cats"}]
    answer = client.chat(model="qwen2.5", messages=asked, tools=TOOLS_OLLAMA)
    [call] = answer.message.tool_calls
    assert call.function.name == "lookup" and call.function.arguments == {"term": "cats"}
    sent = openai_leg.sent()
    assert sent["tools"][0]["type"] == "function"
    assert sent["tools"][0]["function"]["name"] == "lookup"
    streamed = list(client.chat(model="qwen2.5", messages=asked, tools=TOOLS_OLLAMA,
                                stream=True))
    calls = [tool for chunk in streamed for tool in (chunk.message.tool_calls or [])]
    assert [(tool.function.name, tool.function.arguments) for tool in calls] == [
        ("lookup", {"term": "cats"})]  # whole, once
    after = client.chat(model="qwen2.5", tools=TOOLS_OLLAMA, messages=[
        *asked, {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        {"role": "tool", "content": "a small feline", "tool_name": "lookup"}])
    assert after.message.content and not after.message.tool_calls
    sent = openai_leg.sent()
    assistant, result = sent["messages"][1], sent["messages"][2]
    assert assistant["role"] == "assistant"
    [openai_call] = assistant["tool_calls"]
    assert openai_call["function"]["name"] == "lookup"
    assert json.loads(openai_call["function"]["arguments"]) == {"term": "cats"}
    assert result["role"] == "tool" and result["content"] == "a small feline"
    assert result.get("tool_call_id") == openai_call["id"]


def test_thinking_asked_comes_from_reasoning_content(openai_leg):
    client = ollama_client(openai_leg)
    thought = client.chat(model="deepseek-r1:7b", messages=HI, think=True)
    assert thought.message.thinking == reasoning_text("hi")
    assert thought.message.content == answer_text("hi", 1)
    chunks = list(client.chat(model="deepseek-r1:7b", messages=HI, think=True, stream=True))
    assert "".join(chunk.message.thinking or "" for chunk in chunks) == reasoning_text("hi")
    assert "".join(chunk.message.content for chunk in chunks) == answer_text("hi", 1)


def test_list_and_show_come_from_the_openai_models(openai_leg):
    client = ollama_client(openai_leg)
    names = [model.model for model in client.list().models]
    assert "qwen3:latest" in names and "all-minilm:latest" in names
    assert openai_leg.upstream.count("/v1/models") >= 1
    shown = client.show("qwen3:latest")
    assert "completion" in shown.capabilities
    assert shown.modified_at == created("qwen3:latest")  # the upstream's own date
    assert asked(openai_leg.upstream, "/v1/models/qwen3:latest") >= 1
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("no-such-model")
    assert missing.value.status_code == 404
    no_native_calls(openai_leg)
