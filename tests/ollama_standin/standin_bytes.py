"""What the stand-in's tests compare bytes with: the reference's frames
(shared/reference/ollama-wire-format.md) and the masking of per-call values (ids,
`created`, `created_at`, tool call ids) on both sides."""

from __future__ import annotations

import json
import re

import openai
import requests

REASONING = "Okay, the user asks about hello world. Let me think.\nI will echo it back."
HELLO = [{"role": "user", "content": "hello world"}]
DONE = b"data: [DONE]\n\n"

_PER_CALL = [(re.compile(rb'"id":"(chatcmpl|cmpl)-\d+"'), rb'"id":"\1-N"'),
             (re.compile(rb'"id":"call_[a-z0-9]{8}"'), rb'"id":"call_N"'),
             (re.compile(rb'"created":\d+'), rb'"created":0'),
             (re.compile(rb'"created_at":"[^"]+"'), rb'"created_at":"T"')]


def masked(raw: bytes) -> bytes:
    for pattern, replacement in _PER_CALL:
        raw = pattern.sub(replacement, raw)
    return raw


def chat(standin, body, headers=None, **kwargs):
    return requests.post(standin.url + "/v1/chat/completions", json=body, headers=headers,
                         **kwargs)


def sse_events(response):
    """The JSON payloads of an SSE body, and whether it ended with [DONE]."""
    frames = response.content.decode().split("\n\n")
    assert frames[-1] == ""
    payloads = [f.removeprefix("data: ") for f in frames[:-1]]
    assert all(f.startswith("data: ") for f in frames[:-1])
    done = payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads if p != "[DONE]"], done


def frame(delta: str, finish: str = "null", model: str = "qwen3", extra: str = "") -> bytes:
    """A /v1 chat stream frame, as section 2 of the reference writes it; `extra`: what
    follows `finish_reason` in the choice (`,"logprobs":{…}`)."""
    return (b'data: {"id":"chatcmpl-87","object":"chat.completion.chunk","created":1755000000,'
            b'"model":"%s","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":%s,'
            b'"finish_reason":%s%s}]}\n\n'
            % (model.encode(), delta.encode(), finish.encode(), extra.encode()))


def native_line(message: str, done: str = "false", model: str = "llama3.2",
                extra: str = "") -> bytes:
    """A native /api/chat stream line before the last; `extra`: what follows `done`."""
    return (b'{"model":"%s","created_at":"T","message":%s,"done":%s%s}\n'
            % (model.encode(), message.encode(), done.encode(), extra.encode()))


def native_metrics(prompt: int, completion: int) -> bytes:
    """The metrics of a native last line or whole body (a 1 ms prompt and 20 ms token)."""
    return (b'"total_duration":%d,"load_duration":1334875,"prompt_eval_count":%d,'
            b'"prompt_eval_duration":%d,"eval_count":%d,"eval_duration":%d'
            % (1334875 + prompt * 1_000_000 + completion * 20_000_000, prompt,
               prompt * 1_000_000, completion, completion * 20_000_000))


def openai_completion(standin, stream: bool, **request):
    """A chat completion through the official `openai` client, whole or assembled by
    the client from the stream."""
    client = openai.OpenAI(base_url=standin.url + "/v1", api_key="x", max_retries=0)
    if stream:
        with client.chat.completions.stream(**request) as events:
            return events.get_final_completion()
    return client.chat.completions.create(**request)
