"""End to end: logprobs through the think filter (issue 24, item 5). The stand-in sends
one entry per token, reasoning tokens included, on the token's own chunk or all together
in a whole body; through the bridge, the entries of removed reasoning and markup are
gone and those of the answer arrive with the chunk that carries their text, whether the
stream flowed, was held until `</think>` or held to its end."""

from __future__ import annotations

import json
from typing import Any, Iterator

import openai
import pytest
import requests
from test_think_evidence_e2e import ANSWER, PROMPT, fresh

from bridge.serve.processes import Process, start_bridge

PATHS = ["/api/chat", "/api/generate", "/v1/chat/completions"]
CASES = [  # (stand-in think mode, model family): how the filter treats the stream
    ("auto", "deepseek-r1:7b"),  # reasoning in a field: content flows, field dropped
    ("tags", "deepseek-r1:7b"),  # a think block the model opens: swallowed, then flows
    ("tags-no-open", "deepseek-r1:7b"),  # only `</think>`: held until it, then flows
    ("none", "deepseek-r1:7b"),  # might start inside, never does: held to the end
    ("none", "llama3.2"),  # cannot reason: nothing held, nothing removed
]


@pytest.fixture(scope="module")
def bridge(standin_server, tmp_path_factory) -> Iterator[Process]:
    with start_bridge(upstream=standin_server.url, workers=1,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


def request(bridge: Process, path: str, model: str, think: str, stream: bool) -> Any:
    body: dict[str, Any] = {"model": model, "stream": stream}
    if path == "/v1/completions":
        body.update(prompt=PROMPT, logprobs=2)
    else:
        body.update(logprobs=True, top_logprobs=2)
        if path == "/api/generate":
            body["prompt"] = PROMPT
        else:
            body["messages"] = [{"role": "user", "content": PROMPT}]
    response = requests.post(bridge.url + path, json=body, stream=stream, timeout=30,
                             headers={"X-Standin-Think": think,
                                      "X-Standin-Token-Delay": "0.01"})
    assert response.status_code == 200, response.text
    if not stream:
        return response.json()
    events = []
    for line in response.iter_lines():
        line = line.removeprefix(b"data: ")
        if line.startswith(b"{"):
            events.append(json.loads(line))
    return events


def text_and_tokens(event: dict, path: str) -> tuple[str, list[str]]:
    """The answer text of one event or body, and the tokens of its logprobs entries."""
    if path.startswith("/api"):
        text = event["message"]["content"] if path == "/api/chat" else event["response"]
        return text, [entry["token"] for entry in event.get("logprobs") or []]
    if not event.get("choices"):
        return "", []
    choice = event["choices"][0]
    holder = choice.get("delta") or choice.get("message") or {}
    text = holder.get("content") if "text" not in choice else choice["text"]
    entries = (choice.get("logprobs") or {}).get("content") or []
    return text or "", [entry["token"] for entry in entries]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("think, family", CASES)
def test_logprobs_follow_the_answer_text(bridge, models, path, think, family):
    events = request(bridge, path, fresh(family), think, stream=True)
    for event in events:
        text, tokens = text_and_tokens(event, path)
        # each chunk carries the entries of its own text, nothing else
        assert "".join(tokens) == text, event
        if path.startswith("/api"):
            assert "thinking" not in json.dumps(event)
    texts = [text_and_tokens(event, path)[0] for event in events]
    assert "".join(texts) == ANSWER  # every answer token's entry arrived, no reasoning's
    body = request(bridge, path, fresh(family), think, stream=False)
    text, tokens = text_and_tokens(body, path)
    assert text == ANSWER and "".join(tokens) == ANSWER
    if path.startswith("/api"):
        assert all(entry["top_logprobs"][0]["token"] == entry["token"]
                   for entry in body["logprobs"])


# (completions are never held: a lone `</think>` there leaks, see the README)
@pytest.mark.parametrize("think, family", [case for case in CASES if case[0] != "tags-no-open"])
def test_completions_get_no_logprobs_from_ollama_and_none_are_made_up(bridge, models,
                                                                       think, family):
    events = request(bridge, "/v1/completions", fresh(family), think, stream=True)
    assert "".join(text_and_tokens(e, "/v1/completions")[0] for e in events) == ANSWER
    assert not any(choice.get("logprobs") for e in events for choice in e["choices"])
    body = request(bridge, "/v1/completions", fresh(family), think, stream=False)
    assert body["choices"][0]["text"] == ANSWER and not body["choices"][0].get("logprobs")


def test_the_openai_client_reads_the_logprobs_of_a_held_answer(bridge, models):
    client = openai.OpenAI(base_url=bridge.url + "/v1", api_key="sk-x", max_retries=0,
                           default_headers={"X-Standin-Think": "tags-no-open"})
    try:
        chunks = list(client.chat.completions.create(
            model=fresh("deepseek-r1:7b"), messages=[{"role": "user", "content": PROMPT}],
            stream=True, logprobs=True, top_logprobs=1))
        tokens = [entry.token for chunk in chunks for choice in chunk.choices
                  if choice.logprobs for entry in choice.logprobs.content or []]
        assert "".join(tokens) == ANSWER
        first = next(chunk for chunk in chunks if chunk.choices and chunk.choices[0].logprobs)
        assert first.choices[0].delta.content == first.choices[0].logprobs.content[0].token
    finally:
        client.close()
