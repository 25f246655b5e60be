"""End to end: what the client asked for about reasoning (issue 24, items 6 and 7).

A client that asks for reasoning gets it in its surface's own fields, whatever the
upstream did with it (a field, tags with or without the opening one); a request silent
about it gets the server's default; a tool loop's reasoning goes back upstream. Through
gunicorn and the stand-in, with the `openai` SDK and the `ollama` client.
"""

# ruff: noqa: F811 - the filter's tests' fixtures, imported, are the tests' arguments

from __future__ import annotations

import json
import uuid

import openai
import pytest
import requests
from helpers import show_upstream_is_open
from test_think_filter_e2e import (  # noqa: F401 - the bridges and clients of the filter's tests
    ANSWER,
    PROMPT,
    REASONING,
    _bridge,
    _close_clients,
    filtering,
    keeping,
    native,
    oai,
)

# (stand-in think mode, model): reasoning in a field, in tags, with only the closing tag
CASES = [("field", "qwen3"), ("tags", "qwen2.5"), ("tags-no-open", "deepseek-r1:7b")]
# the ways a /v1 client asks for reasoning; a `reasoning` object wins over
# `reasoning_effort`, even one without an effort (Ollama then thinks: the model's default)
V1_ASKS = [{"reasoning_effort": "high"}, {"reasoning_effort": "low"},
           {"extra_body": {"reasoning": {"effort": "high"}}},
           {"reasoning_effort": "none", "extra_body": {"reasoning": {}}}]


@pytest.fixture(scope="module")
def cached(standin_server, tmp_path_factory):
    cache_dir = str(tmp_path_factory.mktemp("cache"))
    for process in _bridge(standin_server, tmp_path_factory, "--enable-cache", "--cache-dir",
                           cache_dir):
        show_upstream_is_open(process)
        yield process


def extra(holder, name: str) -> str | None:
    return (holder.model_extra or {}).get(name)


def joined(holders, name: str) -> str:
    return "".join(extra(holder, name) or "" for holder in holders)


def v1_stream(client: openai.OpenAI, model: str, **kwargs) -> tuple[str, str, str]:
    """(content, reasoning, reasoning_content) of a streamed chat completion."""
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], stream=True, **kwargs))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    return ("".join(delta.content or "" for delta in deltas), joined(deltas, "reasoning"),
            joined(deltas, "reasoning_content"))


def v1_whole(client: openai.OpenAI, model: str, **kwargs):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], **kwargs).choices[0].message


# --- 6. a client that asks for reasoning gets it ------------------------------------------

@pytest.mark.parametrize("ask", V1_ASKS)
@pytest.mark.parametrize("think, model", CASES)
def test_v1_chat_asking_for_reasoning_gets_it_in_its_fields(filtering, standin, think, model,
                                                            ask):
    client = oai(filtering, think)
    assert v1_stream(client, model, **ask) == (ANSWER, REASONING, REASONING)
    message = v1_whole(client, model, **ask)
    assert message.content == ANSWER
    assert message.model_extra == {"reasoning": REASONING, "reasoning_content": REASONING}


@pytest.mark.parametrize("think, model", CASES[1:])
def test_v1_completions_asking_for_reasoning_gets_it_beside_the_text(filtering, standin,
                                                                      think, model):
    client = oai(filtering, think)
    ask = {"extra_body": {"reasoning_effort": "high"}}
    choice = client.completions.create(model=model, prompt=PROMPT, **ask).choices[0]
    assert (choice.text, extra(choice, "reasoning")) == (ANSWER, REASONING)
    chunks = list(client.completions.create(model=model, prompt=PROMPT, stream=True, **ask))
    choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
    if think == "tags-no-open":
        # A completions stream is never held (Ollama has no reasoning there, item 1): a
        # lone `</think>` in its text leaks what came before it, apart from the answer
        # (README, the cases that can still leak); the whole body above shows it.
        assert "".join(choice.text for choice in choices) == f"{REASONING}\n\n\n{ANSWER}"
        return
    assert "".join(choice.text for choice in choices) == ANSWER
    assert joined(choices, "reasoning") == joined(choices, "reasoning_content") == REASONING


@pytest.mark.parametrize("ask", [True, "high", "low"])
@pytest.mark.parametrize("think, model", CASES)
def test_api_chat_asking_for_reasoning_gets_thinking(filtering, standin, think, model, ask):
    client = native(filtering, think)
    messages = [{"role": "user", "content": PROMPT}]
    parts = list(client.chat(model=model, messages=messages, think=ask, stream=True))
    assert "".join(part.message.content or "" for part in parts) == ANSWER
    assert "".join(part.message.thinking or "" for part in parts) == REASONING
    whole = client.chat(model=model, messages=messages, think=ask, stream=False)
    assert (whole.message.content, whole.message.thinking) == (ANSWER, REASONING)


@pytest.mark.parametrize("think, model", CASES)
def test_api_generate_asking_for_reasoning_gets_thinking(filtering, standin, think, model):
    client = native(filtering, think)
    parts = list(client.generate(model=model, prompt=PROMPT, think=True, stream=True))
    assert "".join(part.response for part in parts) == ANSWER
    assert "".join(part.thinking or "" for part in parts) == REASONING
    whole = client.generate(model=model, prompt=PROMPT, think=True, stream=False)
    assert (whole.response, whole.thinking) == (ANSWER, REASONING)


def test_a_silent_request_gets_the_servers_default(filtering, keeping, standin):
    assert v1_stream(oai(filtering, "tags"), "qwen2.5") == (ANSWER, "", "")
    assert v1_stream(oai(keeping, "tags"), "qwen2.5") == (ANSWER, REASONING, REASONING)
    assert native(filtering, "auto").chat(model="qwen3", messages=[
        {"role": "user", "content": PROMPT}], stream=False).message.thinking is None
    assert native(keeping, "auto").generate(model="qwen3", prompt=PROMPT).thinking == REASONING


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_that_switches_reasoning_off_outranks_the_servers_default(keeping, standin,
                                                                          stream):
    # qwen3 with thinking off writes its reasoning in tags into the content (the stand-in
    # does as Ollama): the client said it wants none, so it gets none
    messages = [{"role": "user", "content": PROMPT}]
    parts = native(keeping, "auto").chat(model="qwen3", messages=messages, think=False,
                                         stream=stream)
    for part in parts if stream else [parts]:
        assert not part.message.thinking
        assert "think>" not in part.message.content and "Okay" not in part.message.content
    if stream:
        assert v1_stream(oai(keeping, "auto"), "qwen3",
                         reasoning_effort="none") == (ANSWER, "", "")
    else:
        assert v1_whole(oai(keeping, "auto"), "qwen3", reasoning_effort="none").model_extra == {}


def native_answer(bridge, path: str, stream: bool, **body) -> tuple[str, str]:
    """(answer, thinking) of a native request sent as is (the `ollama` client sends only
    the fields of Ollama's own API)."""
    body.update({"model": "qwen3", "stream": stream})
    if path == "/api/chat":
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    response = requests.post(bridge.url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.iter_lines() if line]
    parts = [line.get("message", line) for line in lines]
    return ("".join(part.get("content", part.get("response", "")) for part in parts),
            "".join(part.get("thinking") or "" for part in parts))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_native_requests_are_read_by_think_alone(filtering, keeping, standin, path, stream):
    # Ollama's native API has no `reasoning_effort` nor `reasoning` (it ignores them): a
    # native client that asks with `think` gets its thinking whatever else it sends, and
    # one silent about `think` gets the server's default
    assert native_answer(filtering, path, stream, think=True,
                         reasoning_effort="none") == (ANSWER, REASONING)
    assert native_answer(filtering, path, stream, think=True,
                         reasoning={"effort": "none"}) == (ANSWER, REASONING)
    assert native_answer(keeping, path, stream, reasoning_effort="none") == (ANSWER, REASONING)
    assert native_answer(filtering, path, stream, reasoning_effort="high") == (ANSWER, "")


WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}]
ASKING = {  # path -> a request asking for reasoning (a tool call after it on chat)
    "/api/chat": {"think": True, "tools": WEATHER,
                  "messages": [{"role": "user", "content": PROMPT}]},
    "/api/generate": {"think": True, "prompt": PROMPT},
    "/v1/chat/completions": {"reasoning_effort": "high", "tools": WEATHER,
                             "messages": [{"role": "user", "content": PROMPT}]},
}


def key_orders(url: str, path: str, stream: bool) -> list[list[str]]:
    """The keys, in order, of each event's (or the body's) part that holds the text."""
    response = requests.post(url + path, timeout=30,
                             json={"model": "qwen3", "stream": stream, **ASKING[path]})
    assert response.status_code == 200, response.text
    lines = [line.removeprefix(b"data: ") for line in response.iter_lines() if line]
    events = [json.loads(line) for line in lines if line != b"[DONE]"]
    holders = [event["choices"][0].get("delta", event["choices"][0].get("message"))
               if "choices" in event else event.get("message", event) for event in events]
    return [[key for key in holder if key != "reasoning_content"] for holder in holders]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", list(ASKING))
def test_kept_reasoning_sits_where_ollama_puts_it(filtering, standin, path, stream):
    # after the text, before a tool call and the rest (Ollama's structs, field by field)
    assert key_orders(filtering.url, path, stream) == key_orders(standin.url, path, stream)


def test_asking_or_not_never_gets_the_others_cached_answer(cached, standin):
    """The wish is part of the key, and the filter (outside the cache) keeps or removes the
    reasoning of a stored answer per request, hits included."""
    prompt = f"{PROMPT} ({uuid.uuid4().hex[:8]})"
    silent = {"model": "qwen3", "messages": [{"role": "user", "content": prompt}],
              "stream": False}
    asking = {**silent, "reasoning_effort": "high"}
    url = cached.url + "/v1/chat/completions"
    seen = []
    for body in (asking, silent, asking, silent, {**asking, "stream": True}):
        response = requests.post(url, json=body, timeout=30)
        if body.get("stream"):
            events = [json.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith(b"data: {")]
            deltas = [event["choices"][0]["delta"] for event in events if event["choices"]]
            message = {"reasoning": "".join(d.get("reasoning", "") for d in deltas)}
        else:
            message = response.json()["choices"][0]["message"]
        seen.append((response.headers["x-cache"][:3], message.get("reasoning")))
    reasoning = seen[0][1]
    assert reasoning.startswith("Okay, the user asks") and reasoning.endswith("back.")
    assert seen == [("MIS", reasoning), ("MIS", None), ("HIT", reasoning), ("HIT", None),
                    ("HIT", reasoning)]
    assert standin.count("/v1/chat/completions") == 2


# --- 7. the history a tool loop needs goes upstream -----------------------------------------

CALL_ID = "call_k3j9x0ab"


def tool_loop(reasoning_field: str, arguments) -> list[dict]:
    """An earlier turn with reasoning, then the last user message, then a tool loop: the
    assistant's call with its reasoning, and the tool's result."""
    return [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nThe user greets.\n</think>\n\nHello!",
         reasoning_field: "The user greets."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", reasoning_field: "I should call get_weather.",
         "tool_calls": [{"id": CALL_ID, "type": "function", "function": {
             "name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": CALL_ID}]


def sent_messages(standin) -> list[dict]:
    return json.loads(standin.requests[-1].body)["messages"]


@pytest.mark.parametrize("stream", [False, True])
def test_v1_tool_loop_reasoning_is_forwarded(filtering, standin, stream):
    history = tool_loop("reasoning", '{"city":"Paris"}')
    history[3]["reasoning_content"] = history[3]["reasoning"]
    response = oai(filtering, "auto").chat.completions.create(model="qwen3", messages=history,
                                                      stream=stream)
    if stream:
        list(response)  # read to its end
    sent = sent_messages(standin)
    assert sent[1] == {"role": "assistant", "content": "Hello!"}  # an earlier turn: cleaned
    assert sent[3] == history[3]  # after the last user message: as the client sent it
    assert sent[4] == history[4]


@pytest.mark.parametrize("stream", [False, True])
def test_api_chat_tool_loop_thinking_is_forwarded(filtering, standin, stream):
    history = tool_loop("thinking", {"city": "Paris"})
    response = native(filtering, "auto").chat(model="qwen3", messages=history, stream=stream)
    if stream:
        list(response)  # read to its end
    sent = sent_messages(standin)
    assert sent[1] == {"role": "assistant", "content": "Hello!"}
    assert sent[3]["thinking"] == "I should call get_weather."
    assert sent[3]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                    "arguments": {"city": "Paris"}}


def test_the_forwarded_reasoning_is_part_of_the_key(cached, standin):
    question = uuid.uuid4().hex[:8]
    history = tool_loop("thinking", {"city": question})
    body = {"model": "qwen3", "messages": history, "stream": False}
    url = cached.url + "/api/chat"

    def status(messages) -> str:
        return requests.post(url, json={**body, "messages": messages},
                             timeout=30).headers["x-cache"]

    assert status(history) == "MISS"
    assert status(history).startswith("HIT")
    # the reasoning of an earlier turn is not sent upstream: the same question
    earlier = {**history[1], "thinking": "Something else."}
    assert status([history[0], earlier, *history[2:]]).startswith("HIT")
    # the tool loop's is: another question
    current = {**history[3], "thinking": "Something else."}
    assert status([*history[:3], current, history[4]]) == "MISS"
    assert standin.count("/api/chat") == 2
