"""A translated stream's frames, however they are made (most from a template of their
bytes, the rest from a dict), are the compact JSON of the data they carry, so that the
stages after the crossing read them without parsing them again and a client reads the
same bytes either way; text that needs escaping included."""

from __future__ import annotations

import json

import pytest

from bridge.core import streaming
from bridge.core.exchange import Frame, encode_json
from bridge.surfaces.anthropic import Anthropic
from bridge.surfaces.anthropic_kind import MessagesReader
from bridge.surfaces.ollama import OllamaChat
from bridge.surfaces.openai import ChatReader, OpenAIChat

TEXTS = ["Paris", ' "quoted" \\ back', "line\nbreak\ttab", "\u2028\u2029 é 😀", "\x00\x1f",
         "</script>"]
MODELS = ["qwen3", "wé/ird:\"model\""]


def _canonical(model: str, text: str, **message: str) -> dict:
    return {"model": model, "created_at": streaming.ollama_time(),
            "message": {"role": "assistant", "content": text, **message}, "done": False}


def _stream(model: str) -> list[dict]:
    frames = [_canonical(model, "", thinking="Hmm \"so\"")]
    frames += [_canonical(model, text) for text in TEXTS]
    frames.append({"model": model, "created_at": streaming.ollama_time(),
                   "message": {"role": "assistant", "content": ""}, "done": True,
                   "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 7})
    return frames


def _translators(model: str) -> dict:
    openai_call = OpenAIChat().request(
        {"model": model, "messages": [{"role": "user", "content": "q"}], "stream": True,
         "stream_options": {"include_usage": True}}, {})
    anthropic_call = Anthropic().request(
        {"model": model, "max_tokens": 9, "messages": [{"role": "user", "content": "q"}],
         "stream": True}, {})
    return {"ollama": OllamaChat().translator(OllamaChat().request({"model": model}, {})),
            "openai": OpenAIChat().translator(openai_call),
            "anthropic": Anthropic().translator(anthropic_call)}


def _assert_carries_its_data(frame: Frame) -> None:
    if frame.is_done:
        return
    assert frame.raw == encode_json(frame.data)
    assert json.loads(frame.raw) == frame.data


@pytest.mark.parametrize("wire", ["ollama", "openai", "anthropic"])
@pytest.mark.parametrize("model", MODELS)
def test_each_frame_of_a_translated_stream_is_the_json_of_its_data(wire, model):
    translator = _translators(model)[wire]
    out = [frame for native in _stream(model) for frame in translator.frame(native)]
    for frame in out:
        _assert_carries_its_data(frame)
    said = "".join(_text_of(wire, frame.data) for frame in out if not frame.is_done)
    assert said == "".join(TEXTS)


def _text_of(wire: str, data: dict) -> str:
    if wire == "ollama":
        return data["message"]["content"]
    if wire == "openai":
        return "".join(choice["delta"].get("content") or "" for choice in data["choices"])
    delta = data.get("delta") or {}
    return delta.get("text", "") if data["type"] == "content_block_delta" else ""


def _sse(data: dict, event: str | None = None) -> bytes:
    line = b"data: " + encode_json(data) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + line if event else line


def test_an_openai_upstreams_text_reaches_an_ollama_client_as_the_json_of_its_frames():
    chunks = [_sse({"id": "c", "object": "chat.completion.chunk", "model": "m",
                    "choices": [{"index": 0, "delta": {"content": text},
                                 "finish_reason": None}]}) for text in TEXTS]
    chunks += [_sse({"id": "c", "choices": [{"index": 0, "delta": {},
                                             "finish_reason": "stop"}]}), b"data: [DONE]\n\n"]
    reader, translator = ChatReader({"model": "m"}), _translators("m")["ollama"]
    out = [line for frame in streaming.read_sse(chunks) for native in reader.frame(frame)
           for line in translator.frame(native)]
    for frame in out:
        _assert_carries_its_data(frame)
    assert [frame.data["message"]["content"] for frame in out[:-1]] == TEXTS
    assert out[-1].data["done"] is True


def test_an_anthropic_upstreams_text_reaches_an_ollama_client_as_the_json_of_its_frames():
    chunks = [_sse({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}, "content_block_start")]
    chunks += [_sse({"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": text}}, "content_block_delta")
               for text in TEXTS]
    chunks += [_sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                     "usage": {"output_tokens": 6}}, "message_delta"),
               _sse({"type": "message_stop"}, "message_stop")]
    reader, translator = MessagesReader("m"), _translators("m")["ollama"]
    out = [line for frame in streaming.read_sse(chunks) for native in reader.frame(frame)
           for line in translator.frame(native)]
    for frame in out:
        _assert_carries_its_data(frame)
    assert [frame.data["message"]["content"] for frame in out[:-1]] == TEXTS
    assert out[-1].data["eval_count"] == 6
