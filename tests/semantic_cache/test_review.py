"""Acceptance review of the semantic cache (issue 27): the ways a semantic tier could
answer wrongly or cost more than the exact cache alone, each through a real bridge."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from helpers import show_upstream_is_open

from bridge.ollama_standin import Fault

MODEL = "qwen3"
CHAT = "/v1/chat/completions"
SEMANTIC = ("--enable-cache", "--semantic-cache-model", "all-minilm")


def ask(bridge, content: str, **fields) -> requests.Response:
    return requests.post(bridge.url + CHAT, timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": content}], **fields})


def test_identical_requests_still_follow_one_flight_while_embedding(standin, make_bridge,
                                                                    tmp_path):
    """The embedding call is a wait between the flight lookup and the upstream call:
    identical requests arriving meanwhile must still follow the one leader."""
    bridge = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path), workers=1)
    show_upstream_is_open(bridge)
    standin.configure(first_token_delay=1.0)
    standin.push_fault(Fault("slow_headers", delay=1.0, path="/api/embed"), times=4)
    content = f"How do I renew my passport? ref{uuid.uuid4().hex[:10]}"
    generations = standin.count(CHAT)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _i: ask(bridge, content), range(4)))
    assert [answer.status_code for answer in answers] == [200] * 4
    assert len({answer.json()["choices"][0]["message"]["content"] for answer in answers}) == 1
    assert standin.count(CHAT) == generations + 1
