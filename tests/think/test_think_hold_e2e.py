"""End to end: when the think filter holds a stream back, and what the client sees
meanwhile (issue 24, items 1-4): completions are never held, a request's own switch
outranks what other requests showed, a model that can reason never leaks even when
switched off, and hidden reasoning sends the headers at once and empty frames of the
surface's own shape. Through gunicorn, against the stand-in, with fresh model names per
test (what a bridge learns of a model lasts as long as the bridge)."""

from __future__ import annotations

from typing import Any, Iterator

import ollama
import openai
import pytest
import requests
from helpers import wait_for
from test_think_evidence_e2e import (
    ANSWER,
    PROMPT,
    REASONING,
    assert_incremental,
    fresh,
    shows,
    stream,
)

from bridge.ollama_standin import Fault
from bridge.serve.processes import Process, start_bridge

NO_OPEN = {"X-Standin-Think": "tags-no-open"}  # the template wrote `<think>`: only `</think>`
PLAIN = {"X-Standin-Think": "none"}  # a plain answer (a template that honours the switch)
SWITCHES = [("/api/chat", {"think": False}), ("/api/generate", {"think": False}),
            ("/v1/chat/completions", {"reasoning_effort": "none"})]
HEARTBEAT_MS = 100
SLOWER = {"X-Standin-Token-Delay": "0.1"}  # ~1.6 s of reasoning: many heartbeats long


@pytest.fixture(scope="module")
def bridge(standin_server, tmp_path_factory) -> Iterator[Process]:
    with start_bridge("--think-heartbeat", str(HEARTBEAT_MS), upstream=standin_server.url,
                      workers=2, log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


@pytest.fixture(scope="module")
def default_bridge(standin_server, tmp_path_factory) -> Iterator[Process]:
    """Heartbeats every 10 s: none in these tests."""
    with start_bridge(upstream=standin_server.url, workers=1,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


def whole(bridge: Process, path: str, model: str, headers: dict | None = None,
          **body: Any) -> str:
    """The answer text of a non-stream request."""
    if path in ("/v1/completions", "/api/generate"):
        body.setdefault("prompt", PROMPT)
    else:
        body.setdefault("messages", [{"role": "user", "content": PROMPT}])
    response = requests.post(bridge.url + path, timeout=30, headers=headers,
                             json={"model": model, "stream": False, **body})
    assert response.status_code == 200, response.text
    data = response.json()
    return {"/v1/chat/completions": lambda: data["choices"][0]["message"]["content"],
            "/v1/completions": lambda: data["choices"][0]["text"],
            "/api/chat": lambda: data["message"]["content"],
            "/api/generate": lambda: data["response"]}[path]()


def no_reasoning_in(seen) -> bool:
    return not seen.reasoning and "Let me think" not in str(seen.events)


# --- 1. /v1/completions is never held ----------------------------------------------------

@pytest.mark.parametrize("model", ["qwen3", "deepseek-r1:7b"])
def test_completions_of_reasoning_models_stream_as_generated(bridge, models, model):
    # Ollama drops reasoning on /v1/completions (no field for it): nothing to wait for
    model = fresh(model)
    assert_incremental(stream(models, bridge, "/v1/completions", model))
    # a bare `</think>` on a chat stream proves the model starts inside there...
    assert stream(models, bridge, "/v1/chat/completions", model, NO_OPEN).text == ANSWER
    # ...and on a completions stream (shown as it comes: never held, see the README)
    leaked = stream(models, bridge, "/v1/completions", model, NO_OPEN)
    assert leaked.text == f"{REASONING}\n\n\n{ANSWER}"
    # later completions streams of the model still flow as generated
    for _ in range(2):  # whichever worker answers
        assert_incremental(stream(models, bridge, "/v1/completions", model))
    assert whole(bridge, "/v1/completions", model) == ANSWER


# --- 2. the request's switch outranks what requests without it showed ---------------------

@pytest.mark.parametrize("model", ["qwen3-coder", "qwen3"])
@pytest.mark.parametrize("path, switch", SWITCHES)
def test_a_switched_off_request_is_not_held_for_what_others_showed(bridge, models, path,
                                                                    switch, model):
    model = fresh(model)
    # learnt: without the switch, the model starts inside reasoning (a body shows it)
    assert whole(bridge, path, model, NO_OPEN) == ANSWER
    if model.startswith("qwen3:"):
        # a model that can reason: its first switched-off answer shows how it answers
        # those (today's Ollama: the raw output, a think block it opens itself)
        assert_incremental(stream(models, bridge, path, model, None, **switch))
    # switched off, it answers plainly: streamed as generated, not held to the end
    for _ in range(2):  # whichever worker answers
        seen = stream(models, bridge, path, model, PLAIN, **switch)
        assert_incremental(seen)
    assert whole(bridge, path, model, PLAIN, **switch) == ANSWER
    assert shows(models, model) == 1


# --- 3. a model that can reason never leaks, switched off or not --------------------------

@pytest.mark.parametrize("family", ["deepseek-r1:7b", "gpt-oss:20b"])
@pytest.mark.parametrize("path, switch", SWITCHES)
def test_a_switched_off_model_that_still_starts_inside_never_leaks(bridge, models, path,
                                                                   switch, family):
    # deepseek-r1's template writes `<think>` whatever the switch says: the first
    # switched-off stream is held until its `</think>`, then its answer flows. The
    # upstream's `thinking` capability is what tells, not the name: gpt-oss is not in
    # --think-start-models and is held all the same.
    model = fresh(family)
    for _ in range(3):  # the first, and once learnt (on either worker)
        seen = stream(models, bridge, path, model, NO_OPEN, **switch)
        assert_incremental(seen)
        assert no_reasoning_in(seen)
    assert whole(bridge, path, model, NO_OPEN, **switch) == ANSWER
    assert shows(models, model) == 1


# --- 4. hidden reasoning: headers at once, then empty frames ------------------------------

EMPTY = {  # path -> whether an event is an empty frame of that surface
    "/api/chat": lambda e: e.get("message") == {"role": "assistant", "content": ""}
    and e.get("done") is False and set(e) == {"model", "created_at", "message", "done"},
    "/api/generate": lambda e: e.get("response") == "" and e.get("done") is False
    and set(e) == {"model", "created_at", "response", "done"},
    "/v1/chat/completions": lambda e: e.get("object") == "chat.completion.chunk"
    and [c["delta"] for c in e["choices"]] in ([{"content": ""}],
                                               [{"role": "assistant", "content": ""}])
    and e["choices"][0]["finish_reason"] is None,
    "/v1/completions": lambda e: e.get("object") == "text_completion"
    and [c["text"] for c in e["choices"]] == [""] and e["choices"][0]["finish_reason"] is None,
}
FIRST_EMPTY = {"/v1/chat/completions": 1}  # the role chunk comes first there


def _empty_frames_before_content(seen, path: str) -> int:
    count = 0
    for event in seen.events[FIRST_EMPTY.get(path, 0):]:
        if not EMPTY[path](event):
            break
        count += 1
    return count


@pytest.mark.parametrize("think, paths", [
    ("auto", list(EMPTY)),  # today's Ollama: reasoning in a field (dropped on completions)
    ("tags", list(EMPTY)),  # a think block the model opens: swallowed as it comes
    ("tags-no-open", ["/v1/chat/completions", "/api/chat", "/api/generate"]),  # held
])
def test_hidden_reasoning_sends_empty_frames_of_the_surface_shape(bridge, models, think,
                                                                  paths):
    model = fresh("deepseek-r1:7b")
    for path in paths:
        seen = stream(models, bridge, path, model, {**SLOWER, "X-Standin-Think": think})
        assert seen.text == ANSWER and no_reasoning_in(seen)
        assert seen.upstream_busy_at_first_content == 1
        # ~1.6 s of hidden reasoning, a heartbeat every 0.1 s: several came before the answer
        assert _empty_frames_before_content(seen, path) >= 2, (path, seen.events[:4])
        content_at = next(i for i, e in enumerate(seen.events) if EMPTY[path](e) is False
                          and i >= FIRST_EMPTY.get(path, 0))
        assert not any(EMPTY[path](e) for e in seen.events[content_at:]), path


@pytest.mark.parametrize("path", list(EMPTY))
def test_a_stream_that_hides_nothing_gets_no_empty_frames(bridge, models, path):
    seen = stream(models, bridge, path, fresh("llama3.2"), SLOWER)
    assert_incremental(seen)
    assert not any(EMPTY[path](e) for e in seen.events[FIRST_EMPTY.get(path, 0):])


def test_clients_read_empty_frames_as_nothing(bridge, models):
    model, slow = fresh("deepseek-r1:7b"), {**SLOWER, "X-Standin-Think": "tags"}
    client = ollama.Client(host=bridge.url, headers=slow)
    parts = list(client.chat(model=model, messages=[{"role": "user", "content": PROMPT}],
                             stream=True))
    assert "".join(p.message.content or "" for p in parts) == ANSWER
    assert sum(1 for p in parts if not p.message.content and not p.done) >= 2
    assert "".join(p.response for p in client.generate(model=model, prompt=PROMPT,
                                                         stream=True)) == ANSWER
    sdk = openai.OpenAI(base_url=bridge.url + "/v1", api_key="sk-x", max_retries=0,
                        default_headers=slow)
    try:
        chunks = list(sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
        assert sum(1 for c in chunks if c.choices[0].delta.content == "") >= 2
        texts = [c.choices[0].text for c in sdk.completions.create(
            model=model, prompt=PROMPT, stream=True)]
        assert "".join(texts) == ANSWER
    finally:
        sdk.close()
        client._client.close()


@pytest.mark.parametrize("path", list(EMPTY))
def test_headers_go_out_while_reasoning_is_hidden(default_bridge, models, path):
    # The stand-in reasons slowly (a token a second) and is cut after three frames, all
    # reasoning: the headers (and the role chunk on /v1 chat) must reach the client
    # while it still generates, not with the end of the stream.
    models.push_fault(Fault("cut", after_chunks=3, path=path))
    body: dict[str, Any] = {"model": fresh("deepseek-r1:7b"), "stream": True}
    if path in ("/v1/completions", "/api/generate"):
        body["prompt"] = PROMPT
    else:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    with requests.post(default_bridge.url + path, json=body, stream=True, timeout=30,
                       headers={"X-Standin-Token-Delay": "1"}) as response:
        generating = models.in_flight
        assert response.status_code == 200
        rest = response.content
    assert generating == 1
    assert b"error" in rest and b"Let me think" not in rest


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_client_leaving_during_hidden_reasoning_ends_the_upstream_call(bridge, models,
                                                                         path):
    # The bridge is waiting for the upstream's next frame in a read of its own (to send
    # empty frames meanwhile): a client hanging up must still close the upstream call.
    body: dict[str, Any] = {"model": fresh("deepseek-r1:7b"), "stream": True,
                            "messages": [{"role": "user", "content": PROMPT}]}
    with requests.post(bridge.url + path, json=body, stream=True, timeout=30,
                       headers={"X-Standin-Token-Delay": "1"}) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.strip())
        if path.startswith("/v1"):  # the role chunk, then an empty frame
            first = next(line for line in lines if line.strip())
        assert b'"content":""' in first and models.in_flight == 1
    wait_for(lambda: models.in_flight == 0 and models.closed_early == 1,
             what="the upstream call to be hung up")


@pytest.mark.parametrize("path, alive, text", [
    ("/v1/messages", b"event: ping", b'"type":"text_delta"'),  # Anthropic's own sign of life
    ("/v1/responses", b": keep-alive", b'"type":"response.output_text.delta"'),  # a comment
])
def test_translated_surfaces_show_hidden_reasoning_alive_in_their_own_way(bridge, models,
                                                                          path, alive, text):
    body: dict[str, Any] = {"model": fresh("deepseek-r1:7b"), "stream": True}
    if path == "/v1/messages":
        body.update(max_tokens=200, messages=[{"role": "user", "content": PROMPT}])
    else:
        body["input"] = PROMPT
    with requests.post(bridge.url + path, json=body, stream=True, timeout=30,
                       headers=SLOWER) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    first_text = next(i for i, line in enumerate(lines) if text in line)
    assert sum(1 for line in lines[:first_text] if line.startswith(alive)) >= 2
    assert not any(line.startswith(alive) for line in lines[first_text:])
    assert b"Let me think" not in b"".join(lines)
