"""End to end: whether a stream starts inside reasoning is decided from evidence, so that
plain answers flow as they are generated and real reasoners never leak. What a bridge
learns of a model lasts as long as the bridge: each test asks about model names of its
own (the stand-in answers any name, by its family: `qwen3-coder:t1` is a qwen3-coder)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
import requests
from helpers import wait_for
from prometheus_client.parser import text_string_to_metric_families

from bridge.ollama_standin import Fault
from bridge.serve.processes import Process, start_bridge

PROMPT = "Why is the sky blue?"
ANSWER = f"Echo: {PROMPT}"
REASONING = "Okay, the user asks about Why is the sky blue?. Let me think.\nI will echo it back."
SLOW = {"X-Standin-Token-Delay": "0.05"}
# path -> (where the event's text is, where its kept reasoning is)
TEXT = {"/v1/chat/completions": (("choices", 0, "delta", "content"),
                                 ("choices", 0, "delta", "reasoning_content")),
        "/v1/completions": (("choices", 0, "text"), None),
        "/api/chat": (("message", "content"), ("message", "thinking")),
        "/api/generate": (("response",), ("thinking",))}


_tags = itertools.count()


def fresh(model: str) -> str:
    """A name of `model`'s family that no test has used yet."""
    return f"{model.split(':')[0]}:t{next(_tags)}{model.partition(':')[2].replace(':', '-')}"


@pytest.fixture(scope="module")
def bridge(standin_server, tmp_path_factory) -> Iterator[Process]:
    with start_bridge(upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


def shows(standin, model: str) -> int:
    """How often the bridge asked the upstream about `model`'s capabilities."""
    return sum(1 for r in standin.requests if r.path == "/api/show"
               and json.loads(r.body).get("model") == model)


def _get(obj: Any, path: tuple | None) -> str:
    for step in path or ():
        try:
            obj = obj[step]
        except (KeyError, IndexError, TypeError):
            return ""
    return obj if isinstance(obj, str) else ""


@dataclass
class Seen:
    """What a client saw of one stream."""

    content: list[str] = field(default_factory=list)  # one item per event with content
    reasoning: list[str] = field(default_factory=list)
    upstream_busy_at_first_content: int | None = None
    events: list[dict] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.content)


def stream(standin, bridge, path: str, model: str, headers: dict | None = None,
           **body: Any) -> Seen:
    """Stream one answer, noting whether its first content came while the stand-in was
    still generating."""
    if path.startswith("/v1"):
        body.setdefault("stream", True)
    if path.endswith("completions") and "chat" not in path or path == "/api/generate":
        body.setdefault("prompt", PROMPT)
    else:
        body.setdefault("messages", [{"role": "user", "content": PROMPT}])
    text_at, reasoning_at = TEXT[path]
    seen, buffer = Seen(), b""
    with requests.post(bridge.url + path, json={"model": model, **body}, stream=True,
                       timeout=30, headers={**SLOW, **(headers or {})}) as response:
        assert response.status_code == 200, response.text
        for chunk in response.iter_content(chunk_size=None):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                line = line.removeprefix(b"data: ")
                if not line.startswith(b"{"):
                    continue
                event = json.loads(line)
                seen.events.append(event)
                if text := _get(event, text_at):
                    if not seen.content:
                        seen.upstream_busy_at_first_content = standin.in_flight
                    seen.content.append(text)
                if reasoning := _get(event, reasoning_at):
                    seen.reasoning.append(reasoning)
    return seen


def assert_incremental(seen: Seen) -> None:
    """The answer reached the client piece by piece while the upstream generated it
    (a held stream arrives in one piece, at the end)."""
    assert seen.text == ANSWER
    assert seen.upstream_busy_at_first_content == 1
    assert len(seen.content) >= 3, seen.content


def metric(bridge, name: str) -> float:
    text = requests.get(bridge.url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name)


# --- plain models stream from their first request ----------------------------------------

@pytest.mark.parametrize("model", ["qwen3-coder", "qwen3:30b-a3b-instruct-2507"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_model_that_cannot_reason_streams_from_its_first_request(bridge, models, model,
                                                                   path):
    # The name matches --think-start-models, but the upstream says it cannot reason.
    model = fresh(model)
    for _ in range(2):  # whichever worker answers
        assert_incremental(stream(models, bridge, path, model))
    assert shows(models, model) == 1  # asked once, remembered instance-wide


@pytest.mark.parametrize("path, switch", [
    ("/api/chat", {"think": False}),
    ("/api/generate", {"think": False}),
    ("/v1/chat/completions", {"reasoning_effort": "none"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": f"{PROMPT} /no_think"}]}),
])
def test_reasoning_switched_off_by_the_request_streams_at_once(bridge, models, path, switch):
    # `think: false` makes the stand-in (like Ollama) put the raw tagged text in the content:
    # the model opens its own block, which decides at once
    headers = {"X-Standin-Think": "tags"} if "messages" in switch else None
    model = fresh("qwen3")
    seen = stream(models, bridge, path, model, headers, **switch)
    answer = f"Echo: {PROMPT} /no_think" if "messages" in switch else ANSWER
    assert seen.text == answer and seen.upstream_busy_at_first_content == 1
    assert len(seen.content) >= 3 and "<think>" not in seen.text
    # a model that can reason may start inside whatever the switch says: asked once
    assert shows(models, model) == 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/api/generate"])
def test_reasoning_in_a_field_leaves_the_content_plain(bridge, models, path):
    # today's Ollama: deepseek-r1 reasons in `reasoning` / `thinking`, then answers
    blocks = metric(bridge, "bridge_think_blocks_removed_total")
    chars = metric(bridge, "bridge_think_characters_removed_total")
    model = fresh("deepseek-r1:7b")
    seen = stream(models, bridge, path, model)
    assert_incremental(seen)
    assert not seen.reasoning and "Let me think" not in json.dumps(seen.events)
    assert shows(models, model) == 0
    # counted like a tag block: one per answer, all its characters
    wait_for(lambda: metric(bridge, "bridge_think_blocks_removed_total") == blocks + 1)
    assert metric(bridge, "bridge_think_characters_removed_total") == chars + len(REASONING)


# --- real reasoners never leak -------------------------------------------------------

def test_a_model_without_the_opening_tag_never_leaks_and_is_remembered(make_bridge, models):
    bridge = make_bridge("--keep-reasoning", workers=2)
    no_open = {"X-Standin-Think": "tags-no-open"}
    model = fresh("deepseek-r1:7b")
    first = stream(models, bridge, "/v1/chat/completions", model, no_open)
    assert first.text == ANSWER and "".join(first.reasoning) == REASONING
    assert len(first.reasoning) == 1  # not known yet: held until `</think>` showed it
    # Now known instance-wide to start inside: its reasoning flows as it is generated,
    # on either worker.
    for _ in range(2):
        seen = stream(models, bridge, "/v1/chat/completions", model, no_open)
        assert seen.text == ANSWER and "".join(seen.reasoning) == REASONING
        assert len(seen.reasoning) >= 5, seen.reasoning
    assert shows(models, model) == 1


def test_an_unlisted_model_with_a_lone_close_tag(bridge, models):
    no_open = {"X-Standin-Think": "tags-no-open"}
    mine, other = fresh("my-reasoner"), fresh("other-reasoner")
    body = requests.post(bridge.url + "/v1/chat/completions", timeout=30, headers=no_open,
                         json={"model": mine, "messages": [
                             {"role": "user", "content": PROMPT}]}).json()
    assert body["choices"][0]["message"]["content"] == ANSWER  # a body shows it at once
    first = stream(models, bridge, "/api/chat", mine, no_open)
    assert first.text == ANSWER  # ...and taught the bridge before any stream
    other_first = stream(models, bridge, "/api/chat", other, no_open)
    # The first stream of an unlisted model went out as plain: its reasoning leaked,
    # but the answer is not glued to it; every later stream is clean, on any worker.
    assert other_first.text == f"{REASONING}\n\n\n{ANSWER}"
    for _ in range(2):
        assert stream(models, bridge, "/api/chat", other, no_open).text == ANSWER


def test_a_model_the_upstream_cannot_tell_about_streams_from_its_second_request(
        bridge, models):
    models.push_fault(Fault("status", status=404, path="/api/show"))
    plain = {"X-Standin-Think": "none"}  # deepseek-r1 that does not reason
    model = fresh("deepseek-r1:7b")
    first = stream(models, bridge, "/v1/chat/completions", model, plain)
    assert first.text == ANSWER and len(first.content) == 1  # held: the name's guess
    for _ in range(2):  # whichever worker answers
        assert_incremental(stream(models, bridge, "/v1/chat/completions", model, plain))
    assert shows(models, model) == 1


def test_completion_stream_usage_chunk_comes_once(bridge, models):
    seen = stream(models, bridge, "/v1/completions", fresh("qwen3"),
                  stream_options={"include_usage": True})
    assert seen.text == ANSWER
    usage_chunks = [e for e in seen.events if not e.get("choices")]
    assert len(usage_chunks) == 1 and usage_chunks[0] is seen.events[-1]
    assert usage_chunks[0]["usage"]["completion_tokens"] > 0
