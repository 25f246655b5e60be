"""The stand-in's `/v1/messages`, as Ollama serves it around its chat handler: the same
converter the bridge uses, written as Go writes it (`event:` then `data:` per event,
HTML characters escaped, json.Encoder's newline after whole bodies and errors), and
read by the official `anthropic` client."""

from __future__ import annotations

import anthropic
import requests

from bridge.ollama_standin.wire import answer_text, reasoning_text


def test_whole_answer_with_a_thinking_block_in_gos_bytes(standin):
    answer = requests.post(standin.url + "/v1/messages", timeout=10, json={
        "model": "deepseek-r1:7b", "max_tokens": 100,
        "messages": [{"role": "user", "content": "a <b> & c"}]})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.content.endswith(b"}\n") and b"\\u003cb\\u003e \\u0026 c" in answer.content
    body = answer.json()
    assert body["content"] == [{"type": "thinking", "thinking": reasoning_text("a <b> & c")},
                               {"type": "text", "text": answer_text("a <b> & c", 1)}]
    assert body["id"].startswith("msg_") and body["stop_reason"] == "end_turn"
    assert standin.count("/v1/messages") == 1 and standin.count("/api/chat") == 0


def test_stream_events_and_tool_use_through_the_anthropic_client(standin):
    sdk = anthropic.Anthropic(base_url=standin.url, api_key="ollama", max_retries=0)
    raw = requests.post(standin.url + "/v1/messages", timeout=10, json={
        "model": "qwen2.5", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]})
    assert raw.headers["content-type"] == "text/event-stream"
    assert raw.text.startswith('event: message_start\ndata: {"type":"message_start",')
    assert raw.text.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')
    tools = [{"name": "lookup", "input_schema": {"type": "object", "properties": {
        "term": {"type": "string"}}, "required": ["term"]}}]
    with sdk.messages.stream(model="qwen2.5", max_tokens=50, tools=tools,
                             messages=[{"role": "user", "content": "find cats"}]) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert [(block.type, block.name, block.input) for block in message.content] == [
        ("tool_use", "lookup", {"term": "find cats"})]


def test_errors_in_anthropics_shape(standin):
    sdk = anthropic.Anthropic(base_url=standin.url, api_key="ollama", max_retries=0)
    try:
        sdk.messages.create(model="no-such-model", max_tokens=10,
                            messages=[{"role": "user", "content": "hi"}])
    except anthropic.NotFoundError as exc:
        assert exc.body["error"]["type"] == "not_found_error"
    else:
        raise AssertionError("an unknown model was answered")
    bad = requests.post(standin.url + "/v1/messages", timeout=10, json={"model": "qwen2.5"})
    assert bad.status_code == 400 and bad.json() == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "max_tokens is required and must be positive"}}


def test_thinking_asked_of_a_model_that_cannot_think_is_relaxed(standin):
    """Ollama's `relax_thinking`: this API never refuses `thinking` for want of it."""
    answer = requests.post(standin.url + "/v1/messages", timeout=10, json={
        "model": "qwen2.5", "max_tokens": 50, "thinking": {"type": "enabled"},
        "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200
    assert answer.json()["content"] == [{"type": "text", "text": answer_text("hi", 1)}]
