"""Helpers of the end-to-end tests of protocol translation (issue 26): a fake upstream
of one kind (the stand-in as an OpenAI-only API or as Claude's API) and a real bridge
(gunicorn, 2 gevent workers) in front of it, reached either as `-o URL --upstream-api
KIND` or through an upstreams file (`api = "KIND"`, its key from `api_key_env`)."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

import anthropic
import ollama
import openai
import pytest
import requests

from bridge.ollama_standin import RecordedRequest, StandIn, StandInConfig
from bridge.ollama_standin.wire import model_created
from bridge.serve.processes import Process, start_bridge

# The upstreams' own keys (from the upstreams file's `api_key_env`): never to be seen
# anywhere but in the header the upstream's kind wants.
KEYS = {"openai": "sk-openai-upstream-7c1f0e2d9a8b4c3e", "anthropic":
        "sk-ant-api03-upstream-5d4e3f2a1b0c9d8e"}
KEY_ENV = {"openai": "TEST_CROSSING_OPENAI_KEY", "anthropic": "TEST_CROSSING_ANTHROPIC_KEY"}
# How each fake upstream writes reasoning: DeepSeek's `reasoning_content` on the OpenAI
# one; Claude's thinking blocks (what the native chat reasons) on the Anthropic one.
THINK = {"openai": "reasoning_content", "anthropic": "auto"}
MODES = ("o", "file")
HI = [{"role": "user", "content": "hi"}]
VERSION = {"anthropic-version": "2023-06-01"}  # what Claude's API wants on every request
# (kind, mode) of each bridge the tests run against (the `crossed` fixture's params)
LEGS = [(kind, mode) for kind in ("openai", "anthropic") for mode in MODES]
# No retries: a fault the fake upstream is told to answer reaches the client as it is.
FLAGS = ("-a", "0")


@dataclass
class Leg:
    """A bridge and the fake upstream (of `kind`) it sends every model to."""

    kind: str
    mode: str  # "o": -o URL --upstream-api KIND; "file": an upstreams file with a key
    bridge: Process
    upstream: StandIn
    key: str | None = None  # the upstream's key (file mode)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.bridge.url

    def model_calls(self) -> list[Any]:
        """The model requests the upstream got (probes and listings left out)."""
        paths = {"openai": ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"),
                 "anthropic": ("/v1/messages",)}[self.kind]
        return [r for r in self.upstream.requests if r.path in paths]

    def sent(self) -> dict:
        """The body of the last model request the upstream got."""
        return self.model_calls()[-1].json()


def leg_id(param: tuple[str, str]) -> str:
    return "-".join(param)


def legs_of(kind: str) -> pytest.MarkDecorator:
    """Run a test (or a module, as its `pytestmark`) against the bridges in front of an
    upstream of `kind` only (those of `LEGS`, shared with the module's other tests)."""
    return pytest.mark.parametrize("crossed", [leg for leg in LEGS if leg[0] == kind],
                                   indirect=True, ids=leg_id)


def fake_upstream(kind: str, key: str | None = None, port: int = 0) -> StandIn:
    """A started stand-in of `kind` (on `port`, 0: any free one); its `reset()` keeps the
    kind and the key."""
    return StandIn(StandInConfig(kind=kind, think=THINK[kind], api_key=key),
                   port=port).start()


def upstream_table(name: str, url: str, kind: str, models: str = "*",
                   key: bool = True) -> str:
    """One `[[upstream]]` table of an upstreams file, its key (if `key`) from the
    kind's variable (`KEY_ENV`)."""
    table = (f'[[upstream]]\nname = "{name}"\nurl = "{url}"\napi = "{kind}"\n'
             f'models = ["{models}"]\n')
    return table + (f'api_key_env = "{KEY_ENV[kind]}"\n' if key and kind in KEY_ENV else "")


def upstreams_file(directory: Path, kind: str, url: str) -> Path:
    path = directory / f"upstreams-{kind}.toml"
    path.write_text(upstream_table(f"{kind}-cloud", url, kind))
    return path


@contextmanager
def crossing(kind: str, mode: str, directory: Path, *flags: str,
             upstream: StandIn | None = None) -> Iterator[Leg]:
    """A bridge in front of a fake upstream of `kind` (started here unless given)."""
    own = upstream is None
    key = KEYS[kind] if mode == "file" else None
    if upstream is None:
        upstream = fake_upstream(kind, key)
    files = {}
    try:
        if mode == "o":
            process = start_bridge(*FLAGS, "--upstream-api", kind, *flags,
                                   upstream=upstream.url, workers=2, log_dir=directory)
        else:
            files["upstreams"] = upstreams_file(directory, kind, upstream.url)
            process = start_bridge(*FLAGS, "--upstreams", str(files["upstreams"]), *flags,
                                   upstream=None, workers=2, log_dir=directory,
                                   env={KEY_ENV[kind]: KEYS[kind]})
        with process:
            yield Leg(kind, mode, process, upstream, key, files)
    finally:
        if own:
            upstream.stop()



def sse_data(text: str) -> list[dict]:
    """The JSON data of each `data:` line of an SSE answer (`[DONE]` left out)."""
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def first_event_while_upstream_sends(url: str, body: dict, upstream: StandIn,
                                     headers: dict | None = None) -> bytes:
    """POST a streamed request to the bridge with the fake upstream slowed down between
    its chunks, and return the first non-empty line that reaches the client, checking
    that the upstream was still sending then (the stand-in's request still in flight);
    then read the rest to its end."""
    upstream.configure(token_delay=0.2)
    with requests.post(url, json=body, headers=headers, stream=True, timeout=60) as answer:
        assert answer.status_code == 200, answer.text
        lines = (line for line in answer.iter_lines() if line.strip())
        first = next(lines)
        still_sending = upstream.in_flight
        rest = list(lines)
    assert still_sending == 1, "the first event came only once the upstream had finished"
    assert rest, "the stream ended at its first event"
    return first


# ---------------------------------------------------------------- clients and requests

# A prompt of many words: its answer streams in many chunks (one word each).
WORDS = "one two three four five six seven eight nine ten eleven twelve"
SCHEMA = {"type": "object", "properties": {"term": {"type": "string"}}, "required": ["term"]}
TOOLS_OLLAMA = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a term up", "parameters": SCHEMA}}]
TOOLS_OPENAI = TOOLS_OLLAMA
TOOLS_ANTHROPIC = [{"name": "lookup", "description": "Look a term up", "input_schema": SCHEMA}]
CLIENT_KEY = "client-own-token-31"  # what a client sends the bridge (never the upstream's)


def ollama_client(leg: Leg) -> ollama.Client:
    return ollama.Client(host=leg.url, timeout=60)


def openai_client(leg: Leg) -> openai.OpenAI:
    return openai.OpenAI(base_url=leg.url + "/v1", api_key=CLIENT_KEY, max_retries=0,
                         timeout=60)


def anthropic_client(leg: Leg) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=leg.url, api_key=CLIENT_KEY, max_retries=0,
                               timeout=60)


def names(message: str, *words: str) -> bool:
    """Whether an error message names each of `words` (whole words, any case): the field
    refused and the upstream (its kind) that cannot express it."""
    return all(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", message, re.IGNORECASE)
               for word in words)


def created(model: str) -> datetime:
    """When the fake upstreams say `model` was made (both kinds give the same date)."""
    return datetime.fromtimestamp(model_created(model), timezone.utc)


def asked(upstream: StandIn, path: str) -> int:
    """How many requests the upstream got on `path`, however its characters were
    percent-encoded (`/v1/models/qwen3%3Alatest` is `/v1/models/qwen3:latest`)."""
    return sum(1 for request in upstream.requests if unquote(request.path) == path)


def headers_of(request: RecordedRequest) -> dict[str, str]:
    """A recorded request's headers by lower-case name."""
    return {name.lower(): value for name, value in request.headers.items()}


def no_native_calls(leg: Leg) -> None:
    """The fake upstream was never asked for what its kind does not serve."""
    foreign = {"openai": ("/api/", "/v1/messages", "/v1/responses"),
               "anthropic": ("/api/", "/v1/chat/", "/v1/completions", "/v1/embeddings",
                             "/v1/responses")}[leg.kind]
    asked = [f"{r.method} {r.path}" for r in leg.upstream.requests if r.path.startswith(foreign)
             or r.path == "/"]
    assert asked == [], f"the {leg.kind} upstream was asked what it does not serve"
