"""The Responses translation alone, pinned by the cases of Ollama's own Go tests
(`openai/responses_test.go`): the native request each Responses request becomes, the
`response` object, and the stream's events in order with their sequence numbers."""

from __future__ import annotations

import pytest

from bridge.core.errors import BadRequest
from bridge.surfaces.responses import Writer, expand, to_chat

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAAB"
       "JRU5ErkJggg==")


def chat(**request):
    return to_chat({"model": "gpt-oss:20b", **request})


def names(events):
    return [name for name, _ in events]


def user(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant(text):
    return {"type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": text}]}


def call(call_id, name, arguments):
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


# ------------------------------------------------------------------ requests


def test_string_input_instructions_and_options():
    native = chat(instructions="You are a helpful pirate. Always respond in pirate speak.",
                  input="Hello", max_output_tokens=100, top_p=0.5, stream=True)
    assert native == {
        "model": "gpt-oss:20b", "stream": True,
        "messages": [{"role": "system",
                      "content": "You are a helpful pirate. Always respond in pirate speak."},
                     {"role": "user", "content": "Hello"}],
        "options": {"temperature": 1.0, "top_p": 0.5, "num_predict": 100}}


def test_shorthand_messages_and_content_strings():
    native = chat(input=[{"role": "user", "content": "Hello"},
                         {"role": "assistant", "content": "Hi there!"},
                         {"type": "message", "role": "user", "content": "How are you?"}])
    assert native["messages"] == [{"role": "user", "content": "Hello"},
                                  {"role": "assistant", "content": "Hi there!"},
                                  {"role": "user", "content": "How are you?"}]
    assert native["stream"] is False


def test_function_call_and_its_output():
    native = chat(input=[user("what is the weather?"),
                         call("call_abc123", "get_weather", '{"city":"Paris"}'),
                         {"type": "function_call_output", "call_id": "call_abc123",
                          "output": "sunny, 72F"}])
    assert native["messages"] == [
        {"role": "user", "content": "what is the weather?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_abc123",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny, 72F", "tool_call_id": "call_abc123"}]


def test_function_call_output_as_content_parts_with_an_image():
    native = chat(input=[user("inspect the image"), call("call_abc123", "inspect_image", "{}"),
                         {"type": "function_call_output", "call_id": "call_abc123", "output": [
                             {"type": "input_text", "text": "attached image"},
                             {"type": "input_image", "detail": "auto",
                              "image_url": f"data:image/png;base64,{PNG}"}]}])
    assert native["messages"][2] == {"role": "tool", "content": "attached image",
                                     "images": [PNG], "tool_call_id": "call_abc123"}


def test_function_calls_merge_into_the_assistant_message_before_them():
    native = chat(input=[user("check weather and time"), assistant("I'll check both."),
                         call("call_1", "get_weather", '{"city":"Paris"}'),
                         call("call_2", "get_time", '{"city":"Paris"}')])
    assert len(native["messages"]) == 2
    merged = native["messages"][1]
    assert merged["content"] == "I'll check both."
    assert [c["function"]["name"] for c in merged["tool_calls"]] == ["get_weather", "get_time"]


def test_a_message_between_a_call_and_its_output_joins_the_call():
    native = chat(input=[
        {"role": "user", "content": "Find Ollama and inspect the current directory."},
        {"type": "web_search_call", "id": "ws_test", "status": "completed",
         "action": {"type": "search", "query": "Ollama"}},
        call("call_test", "exec_command", '{"cmd":"pwd"}'),
        assistant("I found Ollama and will inspect the directory."),
        {"type": "function_call_output", "call_id": "call_test", "output": "/tmp"}])
    assert len(native["messages"]) == 3
    middle = native["messages"][1]
    assert middle["content"] == "I found Ollama and will inspect the directory."
    assert middle["tool_calls"][0]["id"] == "call_test"
    assert native["messages"][2] == {"role": "tool", "content": "/tmp",
                                     "tool_call_id": "call_test"}


def test_reasoning_items_become_the_next_assistant_messages_thinking():
    native = chat(input=[user("solve 2+2"),
                         {"type": "reasoning", "id": "rs_123",
                          "encrypted_content": "Let me think about this math problem...",
                          "summary": [{"type": "summary_text", "text": "Thinking about math"}]},
                         {"type": "message", "role": "assistant",
                          "content": [{"type": "input_text", "text": "The answer is 4"}]}])
    assert native["messages"][1] == {"role": "assistant", "content": "The answer is 4",
                                     "thinking": "Let me think about this math problem..."}
    native = chat(input=[user("what is the weather?"),
                         {"type": "reasoning", "id": "rs_123",
                          "encrypted_content": "I need to call a tool for this...", "summary": []},
                         call("call_abc", "get_weather", '{"city":"Paris"}')])
    assert native["messages"][1]["thinking"] == "I need to call a tool for this..."
    assert native["messages"][1]["tool_calls"][0]["id"] == "call_abc"
    native = chat(input=[user("hi"),
                         {"type": "reasoning", "encrypted_content": "Still thinking..."}])
    assert native["messages"][1] == {"role": "assistant", "content": "",
                                     "thinking": "Still thinking..."}


@pytest.mark.parametrize(("effort", "think"), [
    ("low", "low"), ("medium", "medium"), ("high", "high"), ("max", "max"),
    ("minimal", "low"), ("xhigh", "max"), ("ultra", "max"), ("none", False)])
def test_reasoning_effort_is_the_native_think(effort, think):
    assert chat(input="hi", reasoning={"effort": effort})["think"] == think


def test_no_effort_leaves_think_to_the_model():
    assert "think" not in chat(input="hi")
    assert "think" not in chat(input="hi", reasoning={"summary": "auto"})


def test_function_tools_and_namespaces():
    shell = {"type": "function", "name": "shell", "description": "Runs a shell command",
             "strict": False, "parameters": {"type": "object", "required": ["command"],
                                             "properties": {"command": {"type": "array"}}}}
    native = chat(input="hello", tools=[
        {"type": "namespace", "name": "muse", "description": "Muse Code tool set.",
         "tools": [{**shell, "name": "bash"}, {**shell, "name": "muse.read_file"}]},
        shell])
    assert native["tools"] == [
        {"type": "function", "function": {"name": "muse.bash", "description": shell["description"],
                                          "parameters": shell["parameters"]}},
        {"type": "function", "function": {"name": "muse.read_file",
                                          "description": shell["description"],
                                          "parameters": shell["parameters"]}},
        {"type": "function", "function": {"name": "shell", "description": shell["description"],
                                          "parameters": shell["parameters"]}}]


def test_tool_choice_none_and_a_named_function_narrow_the_tools():
    tools = [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}]
    assert "tools" not in chat(input="hi", tools=tools, tool_choice="none")
    named = chat(input="hi", tools=tools, tool_choice={"type": "function", "name": "b"})
    assert [tool["function"]["name"] for tool in named["tools"]] == ["b"]
    assert len(chat(input="hi", tools=tools, tool_choice="required")["tools"]) == 2


def test_text_format():
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"]}
    native = chat(input="Give me info about John who is 30",
                  text={"format": {"type": "json_schema", "name": "person", "strict": True,
                                   "schema": schema}})
    assert native["format"] == schema
    assert "format" not in chat(input="hi", text={"format": {"type": "text"}})
    assert chat(input="hi", text={"format": {"type": "json_object"}})["format"] == "json"


@pytest.mark.parametrize(("request_", "param", "message"), [
    ({"input": "hi"}, "model", "'model' is required"),
    ({"model": "m"}, "input", "'input' is required"),
    ({"model": "m", "input": 3}, "input", "'input' must be a string or an array"),
    ({"model": "m", "input": [{"content": "x"}]}, "input[0]",
     "input[0]: input item missing required 'type' field"),
    ({"model": "m", "input": [{"type": "computer_call"}]}, "input[0].type",
     'input[0]: unknown input item type: "computer_call"'),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
     "input[0].content[0]", "file inputs are not currently supported"),
    ({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "input[0].content[0].image_url", "image URLs are not currently supported"),
    ({"model": "m", "input": [call("c", "f", "{not json")]}, "input[0].arguments",
     "failed to parse function call arguments"),
    ({"model": "m", "input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort",
     'invalid reasoning value: "extreme"'),
    ({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type",
     'tools of type "web_search" are not supported'),
    ({"model": "m", "input": "hi", "max_output_tokens": "10"}, "max_output_tokens",
     "'max_output_tokens' must be an integer"),
    ({"model": "m", "input": "hi", "tool_choice": {"type": "function", "name": "x"}},
     "tool_choice", "tool_choice names the function 'x'"),
])
def test_what_cannot_be_expressed_is_a_400_naming_the_field(request_, param, message):
    with pytest.raises(BadRequest) as refused:
        to_chat(request_)
    assert refused.value.param == param
    assert refused.value.message.startswith(message)


def test_expand_puts_the_earlier_conversation_before_the_new_input():
    previous = {"input": [user("My name is Ada.")], "output": [
        {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Hello Ada.", "annotations": [],
                      "logprobs": []}]}]}
    request = {"model": "m", "previous_response_id": "resp_1", "input": "What is my name?"}
    expanded = expand(request, previous)
    assert "previous_response_id" not in expanded
    assert to_chat(expanded)["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"}]


# ------------------------------------------------------------------ answers

NATIVE_DONE = {"model": "gpt-oss:20b", "created_at": "2026-12-07T09:00:00Z",
               "message": {"role": "assistant", "content": ""}, "done": True,
               "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 5}


def test_whole_answer_with_reasoning():
    writer = Writer({"model": "gpt-oss:20b", "input": "hi"})
    body = writer.body({**NATIVE_DONE, "message": {
        "role": "assistant", "thinking": "Analyzing the question...",
        "content": "The answer is 42"}})
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Analyzing the question..."}]
    assert reasoning["encrypted_content"] == "Analyzing the question..."
    assert message == {"id": writer.item_id, "type": "message", "status": "completed",
                       "role": "assistant", "content": [
                           {"type": "output_text", "text": "The answer is 42",
                            "annotations": [], "logprobs": []}]}
    assert body["id"] == writer.response_id and body["id"].startswith("resp_")
    assert body["object"] == "response" and body["status"] == "completed"
    assert isinstance(body["completed_at"], int)
    assert body["usage"] == {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17,
                             "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens_details": {"reasoning_tokens": 0}}
    assert list(body) == [
        "id", "object", "created_at", "completed_at", "status", "incomplete_details", "model",
        "previous_response_id", "instructions", "output", "error", "tools", "tool_choice",
        "truncation", "parallel_tool_calls", "text", "top_p", "presence_penalty",
        "frequency_penalty", "top_logprobs", "temperature", "reasoning", "usage",
        "max_output_tokens", "max_tool_calls", "store", "background", "service_tier",
        "metadata", "safety_identifier", "prompt_cache_key"]
    assert writer.output == body["output"]


def test_whole_answer_with_tool_calls():
    body = Writer({"model": "m", "input": "hi"}).body({**NATIVE_DONE, "message": {
        "role": "assistant", "content": "", "tool_calls": [
            {"id": "call_abc", "function": {"index": 0, "name": "get_weather",
                                            "arguments": {"city": "Paris"}}}]}})
    [item] = body["output"]
    assert item["type"] == "function_call" and item["status"] == "completed"
    assert (item["call_id"], item["name"], item["arguments"]) == (
        "call_abc", "get_weather", '{"city":"Paris"}')


def test_an_answer_cut_by_its_limit_is_incomplete():
    writer = Writer({"model": "m", "input": "hi", "max_output_tokens": 5})
    body = writer.body({**NATIVE_DONE, "done_reason": "length"})
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["max_output_tokens"] == 5
    events = Writer({"model": "m", "input": "hi"}).events({**NATIVE_DONE, "done_reason": "length"})
    assert names(events)[-1] == "response.incomplete"


def chunk(content="", thinking="", done=False, **extra):
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    return {**(NATIVE_DONE if done else {"model": "gpt-oss:20b", "done": False}),
            "message": message, **extra}


def test_stream_text_only():
    writer = Writer({"model": "gpt-oss:20b", "input": "hi"})
    first = writer.events(chunk("Hello"))
    assert names(first) == ["response.created", "response.in_progress",
                            "response.output_item.added", "response.content_part.added",
                            "response.output_text.delta"]
    assert first[0][1]["response"]["output"] == [] and \
        first[0][1]["response"]["status"] == "in_progress"
    assert names(writer.events(chunk(" World"))) == ["response.output_text.delta"]
    last = writer.events(chunk(done=True))
    assert names(last) == ["response.output_text.done", "response.content_part.done",
                           "response.output_item.done", "response.completed"]
    assert last[0][1]["text"] == "Hello World"
    assert last[2][1]["item"]["content"] == [{"type": "output_text", "text": "Hello World",
                                             "annotations": [], "logprobs": []}]
    completed = last[3][1]["response"]
    assert [item["type"] for item in completed["output"]] == ["message"]
    assert completed["usage"]["total_tokens"] == 17
    sequence = [data["sequence_number"] for _, data in first + last]
    assert sequence[:5] == [0, 1, 2, 3, 4] and sequence[5:] == [6, 7, 8, 9]
    assert all(data["type"] == name for name, data in first + last)


def test_stream_event_shapes():
    writer = Writer({"model": "m", "input": "hi"})
    events = dict(writer.events(chunk("Hi")))
    assert events["response.output_item.added"] == {
        "type": "response.output_item.added", "output_index": 0,
        "item": {"id": writer.item_id, "type": "message", "status": "in_progress",
                 "role": "assistant", "content": []}, "sequence_number": 2}
    assert events["response.content_part.added"] == {
        "type": "response.content_part.added", "item_id": writer.item_id, "output_index": 0,
        "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [],
                                     "logprobs": []}, "sequence_number": 3}
    assert events["response.output_text.delta"] == {
        "type": "response.output_text.delta", "item_id": writer.item_id, "output_index": 0,
        "content_index": 0, "delta": "Hi", "logprobs": [], "sequence_number": 4}


def test_stream_tool_calls():
    writer = Writer({"model": "m", "input": "hi"})
    events = writer.events({"model": "m", "done": False, "message": {
        "role": "assistant", "content": "", "tool_calls": [
            {"id": "call_abc", "function": {"name": "get_weather",
                                            "arguments": {"city": "Paris"}}}]}})
    assert names(events) == ["response.created", "response.in_progress",
                             "response.output_item.added",
                             "response.function_call_arguments.delta",
                             "response.function_call_arguments.done",
                             "response.output_item.done"]
    added, done = events[2][1]["item"], events[5][1]["item"]
    assert (added["status"], added["arguments"]) == ("in_progress", "")
    assert (done["status"], done["arguments"], done["call_id"]) == (
        "completed", '{"city":"Paris"}', "call_abc")
    assert events[3][1]["delta"] == '{"city":"Paris"}'
    # text after a tool call is not sent (Ollama's latch); the call is the output
    tail = writer.events(chunk("ignored", done=True))
    assert names(tail) == ["response.completed"]
    assert tail[0][1]["response"]["output"] == [done]


def test_stream_reasoning_then_text():
    writer = Writer({"model": "m", "input": "hi", "reasoning": {"effort": "high"}})
    first = writer.events(chunk(thinking="Let me think..."))
    assert names(first) == ["response.created", "response.in_progress",
                            "response.output_item.added",
                            "response.reasoning_summary_text.delta"]
    assert first[2][1]["item"]["type"] == "reasoning"
    assert first[0][1]["response"]["reasoning"] == {"effort": "high", "summary": None}
    second = writer.events(chunk("The answer is 42"))
    assert names(second) == ["response.reasoning_summary_text.done",
                             "response.output_item.done", "response.output_item.added",
                             "response.content_part.added", "response.output_text.delta"]
    assert second[1][1]["item"]["encrypted_content"] == "Let me think..."
    assert second[2][1]["output_index"] == 1
    last = writer.events(chunk(done=True))
    assert [item["type"] for item in last[-1][1]["response"]["output"]] == [
        "reasoning", "message"]


def test_a_stream_that_fails_ends_with_response_failed():
    writer = Writer({"model": "m", "input": "hi"})
    writer.events(chunk("Hel"))
    [(name, data)] = writer.failed("upstream stream ended prematurely",
                                   "upstream_stream_truncated")
    assert name == "response.failed" and data["sequence_number"] == 5
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"] == {"code": "upstream_stream_truncated",
                                         "message": "upstream stream ended prematurely"}
    # before anything was sent, the failure comes after the opening events
    assert names(Writer({"model": "m", "input": "hi"}).failed("boom")) == [
        "response.created", "response.in_progress", "response.failed"]


# ------------------------------------------------------------------ records


def test_a_shared_record_that_an_answer_contradicts_is_refused_as_no_longer_available():
    """Answers replayed from one entry share a record; one that says something else (a
    filter outside the cache changed its verdict) leaves every id of it refused, never
    continued from another answer than the one it gave."""
    from bridge.cache.memory import MemoryTier
    from bridge.cache.records import GONE, Records
    from bridge.surfaces.responses import Responses
    from bridge.surfaces.stage import REPLACED, Kept

    records = Records(MemoryTier(100, 60.0), None)
    surface = Responses()
    key = records.key("responses", "alice", "a" * 24)
    said = [assistant("Blue, because of Rayleigh scattering.")]
    first = Kept(records, "responses", key, None)
    first("1" * 16, {"input": [user("Why?")], "output": said})
    again = Kept(records, "responses", key, records.find(key))
    again("2" * 16, {"input": [user("Why?")], "output": said})
    assert again.current() and records.get("responses", "alice", "a" * 24, "2" * 16) == {
        "input": [user("Why?")], "output": said}
    other = Kept(records, "responses", key, records.find(key))
    other("3" * 16, {"input": [user("Why?")], "output": [assistant("<think>hm</think>Blue.")]})
    assert not other.current() and not again.current()
    assert records.get("responses", "alice", "a" * 24, "2" * 16) == GONE
    call = surface.request({"model": "m", "input": "And?",
                            "previous_response_id": "resp_" + "a" * 24 + "2" * 16}, {})
    assert surface.recall(call) == ("a" * 24, "2" * 16)
    with pytest.raises(BadRequest) as refused:
        surface.resume(call, None, REPLACED)
    assert "no longer available" in str(refused.value)


def test_streamed_text_deltas_are_the_bytes_of_their_events():
    """Text deltas are made from a template of their bytes: the same bytes and events as
    the other events are made, whatever the text (quotes, escapes, non-ASCII, NUL)."""
    from bridge.core.exchange import encode_json
    from bridge.surfaces.responses import _Stream

    pieces = ["Hi", ' "quoted"', " \\ back\nslash", " é 日本 🙂", " \x00\x1f", " end"]
    chunks = [{"model": "m", "message": {"role": "assistant", "thinking": "Hm."}, "done": False},
              *({"model": "m", "message": {"role": "assistant", "content": piece},
                 "done": False} for piece in pieces)]
    fast, slow = Writer({"model": "m", "input": "hi"}), Writer({"model": "m", "input": "hi"})
    slow.nonce, slow.name, slow.item_id = fast.nonce, fast.name, fast.item_id
    slow.created_at = fast.created_at
    stream = _Stream(fast)
    sent = [(frame.event, frame.raw) for chunk in chunks for frame in stream.frame(chunk)]
    made = [(name.encode(), encode_json(data)) for chunk in chunks
            for name, data in slow.events(chunk)]
    assert sent == made
    assert [event for event, _ in sent].count(b"response.output_text.delta") == len(pieces)
