"""Errors and keys across upstream kinds, end to end: an upstream's 401, 404, 429 and 500
in its own shape reach the client in its surface's shape with the status kept (and a
429's Retry-After); the upstream's key goes in the header its kind wants (Bearer to
the OpenAI one, `x-api-key` to the Anthropic one) and nowhere else — not to the other
header, not in an answer, not in the bridge's log."""

from __future__ import annotations

import anthropic
import ollama
import openai
import pytest
import requests
from crossing_helpers import (
    CLIENT_KEY,
    HI,
    KEYS,
    Leg,
    anthropic_client,
    headers_of,
    ollama_client,
    openai_client,
)

from bridge.ollama_standin import Fault

STATUSES = (401, 404, 429, 500)
MESSAGE = "the upstream says no"


def fault(leg: Leg, status: int) -> None:
    leg.upstream.push_fault(Fault("status", status=status, body=MESSAGE,
                                  retry_after=3 if status == 429 else None))


@pytest.mark.parametrize("status", STATUSES)
def test_native_client_gets_ollamas_error_shape(leg, status):
    fault(leg, status)
    answer = requests.post(leg.url + "/api/chat", timeout=60, json={
        "model": "llama3.2", "messages": HI, "stream": False})
    assert answer.status_code == status
    body = answer.json()
    assert isinstance(body["error"], str)  # Ollama's shape: {"error": "message"}
    if status != 401:
        assert MESSAGE in body["error"]
    if status == 429:
        assert answer.headers["retry-after"] == "3"
    fault(leg, status)
    with pytest.raises(ollama.ResponseError) as failed:
        ollama_client(leg).chat(model="llama3.2", messages=HI)
    assert failed.value.status_code == status


@pytest.mark.parametrize("status", STATUSES)
def test_the_other_clients_get_their_error_shape(leg, status):
    """The openai client in front of Claude, the anthropic client in front of OpenAI."""
    fault(leg, status)
    if leg.kind == "anthropic":
        with pytest.raises(openai.APIStatusError) as failed:
            openai_client(leg).chat.completions.create(model="llama3.2", messages=HI)
        body = failed.value.body  # OpenAI's {"error": {"message", "type", …}}
        message = body["message"]
        assert isinstance(body, dict) and isinstance(body.get("type"), str)
    else:
        with pytest.raises(anthropic.APIStatusError) as failed:
            anthropic_client(leg).messages.create(model="llama3.2", max_tokens=64,
                                                  messages=HI)
        body = failed.value.body
        assert body["type"] == "error"
        assert body["error"]["type"] == {401: "authentication_error", 404: "not_found_error",
                                         429: "rate_limit_error", 500: "api_error"}[status]
        message = body["error"]["message"]
    assert failed.value.status_code == status
    if status != 401:
        assert MESSAGE in message
    if status == 429:
        assert failed.value.response.headers["retry-after"] == "3"


def test_a_model_the_upstream_does_not_have_is_a_404_in_the_clients_shape(leg):
    with pytest.raises(ollama.ResponseError) as native:
        ollama_client(leg).chat(model="no-such-model", messages=HI)
    assert native.value.status_code == 404 and "no-such-model" in native.value.error
    if leg.kind == "anthropic":
        with pytest.raises(openai.NotFoundError):
            openai_client(leg).chat.completions.create(model="no-such-model", messages=HI)
    else:
        with pytest.raises(anthropic.NotFoundError) as claude:
            anthropic_client(leg).messages.create(model="no-such-model", max_tokens=64,
                                                  messages=HI)
        assert claude.value.body["error"]["type"] == "not_found_error"


def test_the_upstreams_key_goes_as_its_kind_wants_and_nowhere_else(leg):
    client = ollama_client(leg)
    answers = [client.chat(model="llama3.2", messages=HI).model_dump_json(),
               client.list().model_dump_json()]
    answers += [chunk.model_dump_json() for chunk in client.chat(
        model="llama3.2", messages=HI, stream=True)]
    if leg.kind == "anthropic":
        raw = openai_client(leg).chat.completions.with_raw_response.create(
            model="llama3.2", messages=HI)
    else:
        raw = anthropic_client(leg).messages.with_raw_response.create(
            model="llama3.2", max_tokens=64, messages=HI)
    answers += [raw.text, str(raw.headers)]
    fault(leg, 401)
    refused = requests.post(leg.url + "/api/chat", timeout=60, json={
        "model": "llama3.2", "messages": HI, "stream": False})
    answers += [refused.text, str(refused.headers)]
    sent = [headers_of(request) for request in leg.upstream.requests]
    assert sent
    if leg.mode == "file":  # the upstream's own key, from the file's api_key_env
        for headers in sent:
            if leg.kind == "openai":
                assert headers["authorization"] == f"Bearer {KEYS['openai']}"
                assert "x-api-key" not in headers
            else:
                assert headers["x-api-key"] == KEYS["anthropic"]
                assert KEYS["anthropic"] not in headers.get("authorization", "")
            assert CLIENT_KEY not in str(headers)
    if leg.kind == "anthropic":
        assert all(headers.get("anthropic-version") for headers in sent)
    log = leg.bridge.log()
    for key in KEYS.values():
        assert key not in log
        assert all(key not in answer for answer in answers)
    other = KEYS["anthropic" if leg.kind == "openai" else "openai"]
    assert all(other not in str(headers) for headers in sent)
