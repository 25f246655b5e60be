"""Ollama's native API as the translation layer's client surfaces and upstream kind:
`/api/chat`, `/api/embed`, `/api/tags`, `/api/show` are the canonical form itself;
`/api/generate` crosses to a chat and back (shapes from Ollama's `api/types.go` and its
generate and chat handler tests)."""

from __future__ import annotations

import base64

import pytest

from bridge.core import streaming
from bridge.core.errors import BadRequest
from bridge.core.exchange import Frame
from bridge.surfaces.adapter import CHAT, EMBED, MODELS, SHOW, Unsupported
from bridge.surfaces.ollama import (
    OllamaChat,
    OllamaEmbed,
    OllamaGenerate,
    OllamaKind,
    OllamaShow,
    OllamaTags,
)

IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n fake png").decode()
CHAT_FRAMES = [  # Ollama's /api/chat stream of a thinking model
    {"model": "qwen3", "created_at": "2025-10-26T17:15:24.0977Z",
     "message": {"role": "assistant", "content": "", "thinking": "Okay"}, "done": False},
    {"model": "qwen3", "created_at": "2025-10-26T17:15:24.1Z",
     "message": {"role": "assistant", "content": "Paris"}, "done": False},
    {"model": "qwen3", "created_at": "2025-10-26T17:15:24.2Z",
     "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_count": 26,
     "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000},
]


def test_the_chat_wire_is_the_canonical_form():
    surface = OllamaChat()
    request = {"model": "qwen3", "messages": [{"role": "user", "content": "Capital?"}],
               "options": {"temperature": 0}, "think": True}
    call = surface.request(request, {})
    assert (call.native, call.model, call.stream) == (request, "qwen3", True)
    assert surface.request({**request, "stream": False}, {}).stream is False
    assert surface.body(CHAT_FRAMES[-1], call) == CHAT_FRAMES[-1]
    translator = surface.translator(call)
    lines = [frame for native in CHAT_FRAMES for frame in translator.frame(native)]
    assert [streaming.encode(line, streaming.NDJSON) for line in lines] == [
        streaming.encode(Frame.of(native), streaming.NDJSON) for native in CHAT_FRAMES]
    assert translator.frame({"error": "model crashed"})[0].data == {"error": "model crashed"}
    assert translator.failed(503, "stopping")[0].data == {"error": "stopping"}
    assert surface.error(404, "model 'x' not found") == {"error": "model 'x' not found"}
    with pytest.raises(BadRequest):
        surface.request({"messages": []}, {})


def test_embed_tags_and_show_are_the_canonical_form_of_their_families():
    embed = OllamaEmbed().request({"model": "all-minilm", "input": ["a", "b"]}, {})
    assert (OllamaEmbed.family, embed.native, embed.stream) == (
        EMBED, {"model": "all-minilm", "input": ["a", "b"]}, False)
    tags = OllamaTags().request({}, {})
    assert (OllamaTags.family, tags.native, tags.model) == (MODELS, {}, "")
    # the older `name` of /api/show names the model too
    show = OllamaShow().request({"name": "llama3.2"}, {})
    assert (OllamaShow.family, show.native["model"], show.model) == (SHOW, "llama3.2",
                                                                      "llama3.2")
    answer = {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]}
    assert OllamaTags().body(answer, tags) == answer


def test_generate_becomes_a_chat_of_its_system_and_prompt():
    call = OllamaGenerate().request({
        "model": "llava", "system": "Describe tersely.", "prompt": "What is this?",
        "images": [IMAGE], "format": "json", "options": {"temperature": 0.1, "seed": 7},
        "think": "low", "keep_alive": "5m", "truncate": True}, {})
    assert call.native == {
        "model": "llava", "stream": True, "messages": [
            {"role": "system", "content": "Describe tersely."},
            {"role": "user", "content": "What is this?", "images": [IMAGE]}],
        "format": "json", "options": {"temperature": 0.1, "seed": 7}, "think": "low",
        "keep_alive": "5m"}
    assert (call.model, call.stream) == ("llava", True)
    plain = OllamaGenerate().request({"model": "m", "prompt": "Hi", "stream": False}, {})
    assert plain.native == {"model": "m", "stream": False,
                            "messages": [{"role": "user", "content": "Hi"}]}
    assert plain.stream is False


@pytest.mark.parametrize("field, value", [("suffix", "    return result"), ("raw", True),
                                          ("context", [1, 2, 3]),
                                          ("template", "{{ .Prompt }}")])
def test_what_a_chat_cannot_express_of_generate_is_refused_by_name(field, value):
    with pytest.raises(Unsupported) as refused:
        OllamaGenerate().request({"model": "m", "prompt": "def f():", field: value}, {})
    assert refused.value.param == field


def test_a_chat_answer_becomes_a_generate_answer_without_context():
    surface = OllamaGenerate()
    call = surface.request({"model": "qwen3", "prompt": "Capital?", "stream": False}, {})
    whole = {**CHAT_FRAMES[-1], "message": {"role": "assistant", "content": "Paris",
                                            "thinking": "Okay"}}
    assert surface.body(whole, call) == {
        "model": "qwen3", "created_at": "2025-10-26T17:15:24.2Z", "response": "Paris",
        "thinking": "Okay", "done": True, "done_reason": "stop",
        "total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_count": 26,
        "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000}


def test_a_chat_stream_becomes_generate_lines_one_for_one():
    surface = OllamaGenerate()
    translator = surface.translator(surface.request({"model": "qwen3", "prompt": "?"}, {}))
    per_frame = [translator.frame(native) for native in CHAT_FRAMES]
    assert [len(frames) for frames in per_frame] == [1, 1, 1]
    first, second, last = (frames[0].data for frames in per_frame)
    assert first == {"model": "qwen3", "created_at": "2025-10-26T17:15:24.0977Z",
                     "response": "", "thinking": "Okay", "done": False}
    assert second["response"] == "Paris" and "thinking" not in second
    assert last["done"] is True and last["eval_count"] == 282 and "context" not in last
    assert translator.frame({"error": "boom"})[0].data == {"error": "boom"}


def test_an_ollama_upstream_speaks_every_wire_and_takes_the_canonical_form_as_is():
    kind = OllamaKind()
    assert (kind.name, kind.probe) == ("ollama", "/api/version")
    assert {("ollama", "chat"), ("ollama", "generate"), ("ollama", "embed"),
            ("ollama", "tags"), ("ollama", "show"), ("openai", "chat"),
            ("openai", "completions"), ("openai", "embeddings"), ("openai", "models"),
            ("openai", "responses")} - kind.speaks == {("openai", "responses")}
    assert kind.credentials("k") == {"authorization": "Bearer k"}
    chat = OllamaGenerate().request({"model": "qwen3", "prompt": "?"}, {}).native
    assert [(out.method, out.path, out.body) for out in (
        kind.outbound(CHAT, chat), kind.outbound(EMBED, {"model": "e", "input": "x"}),
        kind.outbound(MODELS, {}), kind.outbound(SHOW, {"model": "qwen3"}))] == [
        ("POST", "/api/chat", chat), ("POST", "/api/embed", {"model": "e", "input": "x"}),
        ("GET", "/api/tags", None), ("POST", "/api/show", {"model": "qwen3"})]
    assert chat["stream"] is True
    assert kind.whole(CHAT, CHAT_FRAMES[-1], chat) == CHAT_FRAMES[-1]
    assert kind.error({"error": "model 'x' not found"}) == "model 'x' not found"


def test_a_generate_request_round_trips_through_an_ollama_upstream_stream():
    """/api/generate → canonical chat → an Ollama's /api/chat stream, read back line by
    line → /api/generate lines, as the chat said them."""
    surface, kind = OllamaGenerate(), OllamaKind()
    call = surface.request({"model": "qwen3", "prompt": "Capital?"}, {})
    reader, translator = kind.reader(CHAT, call.native), surface.translator(call)
    body = b"".join(streaming.encode(Frame.of(native), streaming.NDJSON)
                    for native in CHAT_FRAMES)
    lines = [out.data for frame in streaming.read_ndjson(body[at:at + 5]
                                                         for at in range(0, len(body), 5))
             for native in reader.frame(frame) for out in translator.frame(native)]
    assert [(line.get("thinking"), line["response"], line["done"]) for line in lines] == [
        ("Okay", "", False), (None, "Paris", False), (None, "", True)]
