"""The OpenAI surface (/v1) through a real gunicorn bridge, with the official `openai` SDK:
every answer must be the one the stand-in gives when called directly."""

from __future__ import annotations

import openai
import pytest
from helpers import normalized

MODEL = "deepseek-r1:7b"
HISTORY = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Why is the sky blue?"},
    {"role": "assistant", "content": "Rayleigh scattering."},
    {"role": "user", "content": "And at sunset?"},
]


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0, timeout=30)


@pytest.fixture
def pair(relay, standin):
    """The SDK pointed at the relay, and the SDK pointed at the stand-in directly."""
    return client(relay.url), client(standin.url)


@pytest.mark.parametrize("messages", [HISTORY[1:2], HISTORY], ids=["single-turn", "multi-turn"])
def test_chat_non_stream_is_the_upstream_answer(pair, standin, messages):
    via, direct = pair
    got = via.chat.completions.create(model=MODEL, messages=messages)
    want = direct.chat.completions.create(model=MODEL, messages=messages)
    assert normalized(got) == normalized(want)
    assert got.choices[0].message.content  # a real answer, not an empty shell
    assert standin.count("/v1/chat/completions") == 2


@pytest.mark.parametrize("shape", ["new", "legacy"])
def test_chat_stream_is_the_upstream_stream_chunk_for_chunk(pair, standin, shape):
    standin.configure(shape=shape)
    via, direct = pair
    kwargs = dict(model=MODEL, messages=HISTORY, stream=True,
                  stream_options={"include_usage": True})
    got = [normalized(chunk) for chunk in via.chat.completions.create(**kwargs)]
    want = [normalized(chunk) for chunk in direct.chat.completions.create(**kwargs)]
    assert got == want
    assert len(got) > 3 and got[-1]["usage"]["total_tokens"] > 0


def test_completions_stream_and_not(pair):
    via, direct = pair
    for stream in (False, True):
        got = via.completions.create(model=MODEL, prompt="Say hi", stream=stream)
        want = direct.completions.create(model=MODEL, prompt="Say hi", stream=stream)
        if stream:
            got, want = list(got), list(want)
        assert normalized(got) == normalized(want)


def test_embeddings_are_the_upstream_vectors(pair):
    via, direct = pair
    got = via.embeddings.create(model="all-minilm", input=["hello", "world"])
    want = direct.embeddings.create(model="all-minilm", input=["hello", "world"])
    assert normalized(got) == normalized(want)
    assert len(got.data) == 2 and len(got.data[0].embedding) >= 4


def test_models_list_is_the_upstream_list(pair):
    via, direct = pair
    got = [model.model_dump() for model in via.models.list()]  # ids are model names here
    want = [model.model_dump() for model in direct.models.list()]
    assert got == want and any(model["id"] == "deepseek-r1:7b" for model in got)


def test_upstream_error_passes_through_with_status_and_body(pair):
    via, direct = pair
    with pytest.raises(openai.NotFoundError) as through_bridge:
        via.chat.completions.create(model="no-such-model", messages=HISTORY[1:2])
    with pytest.raises(openai.NotFoundError) as called_directly:
        direct.chat.completions.create(model="no-such-model", messages=HISTORY[1:2])
    assert through_bridge.value.body == called_directly.value.body
