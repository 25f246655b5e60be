"""The Ollama-native surface (/api) through a real gunicorn bridge, with the official
`ollama` client: every answer must be the one the stand-in gives when called directly."""

from __future__ import annotations

import ollama
import pytest
import requests
from helpers import normalized

MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]


@pytest.fixture
def pair(relay, standin):
    return ollama.Client(host=relay.url, timeout=30), ollama.Client(host=standin.url, timeout=30)


@pytest.mark.parametrize("model", ["llama3.2", "qwen3"])
def test_chat_non_stream(pair, model):
    via, direct = pair
    got = via.chat(model=model, messages=MESSAGES, stream=False)
    want = direct.chat(model=model, messages=MESSAGES, stream=False)
    assert normalized(got) == normalized(want)
    assert got.message.content


def test_chat_stream_line_for_line(pair):
    via, direct = pair
    got = [normalized(part) for part in via.chat(model="qwen3", messages=MESSAGES, stream=True)]
    want = [normalized(part) for part in direct.chat(model="qwen3", messages=MESSAGES,
                                                     stream=True)]
    assert got == want
    assert len(got) > 2 and got[-1]["done"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_generate(pair, stream):
    via, direct = pair
    got = via.generate(model="deepseek-r1:7b", prompt="Why is the sky blue?", stream=stream)
    want = direct.generate(model="deepseek-r1:7b", prompt="Why is the sky blue?", stream=stream)
    if stream:
        got, want = list(got), list(want)
    assert normalized(got) == normalized(want)


def test_tags_show_ps_version_embed(pair):
    via, direct = pair
    assert normalized(via.list()) == normalized(direct.list())
    assert normalized(via.show("llama3.2")) == normalized(direct.show("llama3.2"))
    assert normalized(via.ps()) == normalized(direct.ps())
    assert normalized(via.embed(model="all-minilm", input="hi")) == normalized(
        direct.embed(model="all-minilm", input="hi"))


def test_version_and_unlisted_paths_are_forwarded_unchanged(relay, standin):
    for path in ("/api/version", "/api/embeddings", "/api/no-such-thing"):
        method = requests.get if path == "/api/version" else requests.post
        kwargs = {} if path == "/api/version" else {"json": {"model": "all-minilm",
                                                             "prompt": "hi"}}
        got = method(relay.url + path, timeout=10, **kwargs)
        want = method(standin.url + path, timeout=10, **kwargs)
        assert (got.status_code, got.content) == (want.status_code, want.content), path


def test_upstream_error_passes_through(pair):
    via, direct = pair
    with pytest.raises(ollama.ResponseError) as through_bridge:
        via.chat(model="no-such-model", messages=MESSAGES, stream=False)
    with pytest.raises(ollama.ResponseError) as called_directly:
        direct.chat(model="no-such-model", messages=MESSAGES, stream=False)
    assert (through_bridge.value.status_code, through_bridge.value.error) == (
        called_directly.value.status_code, called_directly.value.error)
