"""What the cache's speed-ups must not change (`bridge/cache/replay.py`, `entry.py`,
`memory.py`): a replayed stream says exactly what the first delivery said (ids and
`created` aside), from memory and from disk; a whole answer assembled from any stored
stream is the upstream's own non-stream answer (tool calls, several choices, log
probabilities, usage, finish reasons); the memory tier's byte budget evicts by size."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from helpers import show_upstream_is_open
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cache import replay
from bridge.cache.entry import Entry, decode_entry, encode_entry
from bridge.cache.memory import MemoryTier, entry_size
from bridge.core.exchange import Frame

CHAT = "/v1/chat/completions"


def without_identity(obj: Any) -> Any:
    """A response object with the fields every response gets of its own taken out."""
    if isinstance(obj, dict):
        return {k: without_identity(v) for k, v in obj.items()
                if k not in ("id", "created", "created_at")}
    return obj


def sse_events(text: str) -> list[Any]:
    return [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
            for line in text.split("\n\n") if line.startswith("data: ")]


# --- through a real bridge: streams replayed from memory and from disk ------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cached(standin_server, tmp_path_factory, cache_dir):
    from bridge.serve.processes import start_bridge

    with start_bridge("--enable-cache", "--cache-dir", str(cache_dir), upstream=standin_server.url,
                      workers=2, log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


@pytest.fixture(scope="module")
def disk_only(standin_server, tmp_path_factory, cache_dir):
    """A second instance on the same cache file without a memory tier: every hit a disk hit."""
    from bridge.serve.processes import start_bridge

    with start_bridge("--enable-cache", "--cache-dir", str(cache_dir), "--cache-memory-bytes",
                      "0", upstream=standin_server.url, workers=1,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        show_upstream_is_open(process)  # else a client's first request may not read the tiers
        yield process


@pytest.mark.parametrize("model", ["deepseek-r1:7b", "llama3.2"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_a_replayed_stream_says_what_the_first_delivery_said(cached, disk_only, model,
                                                             include_usage):
    payload = {"model": model, "stream": True,
               "messages": [{"role": "user", "content": f"replay {model} {include_usage}"}]}
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    with requests.Session() as session:  # one connection: the worker that stored it
        first = session.post(cached.url + CHAT, json=payload, timeout=30)
        assert first.headers["x-cache"] == "MISS"
        replays = [session.post(cached.url + CHAT, json=payload, timeout=30) for _ in range(2)]
    replays += [requests.post(disk_only.url + CHAT, json=payload, timeout=30) for _ in range(2)]
    assert [r.headers["x-cache"] for r in replays] == ["HIT-MEMORY"] * 2 + ["HIT-DISK"] * 2
    original = sse_events(first.text)
    assert original[-1] == "[DONE]" and len(original) > 5
    assert any(e != "[DONE]" and e.get("usage") for e in original) is include_usage
    for response in replays:
        events = sse_events(response.text)
        assert [without_identity(e) for e in events] == [without_identity(e) for e in original]
        ids = {e["id"] for e in events if e != "[DONE]"}
        assert len(ids) == 1 and ids != {original[0]["id"]}
        assert all(isinstance(e["created"], int) for e in events if e != "[DONE]")


def test_an_ollama_stream_replays_line_for_line(cached, disk_only):
    payload = {"model": "qwen3", "messages": [{"role": "user", "content": "ollama replay"}]}
    first = requests.post(cached.url + "/api/chat", json=payload, timeout=30)
    lines = [json.loads(line) for line in first.text.splitlines()]
    assert len(lines) > 3 and lines[-1]["done"] is True
    for url in (cached.url, cached.url, disk_only.url):
        again = requests.post(url + "/api/chat", json=payload, timeout=30)
        assert again.headers["x-cache"].startswith("HIT-")
        replayed = [json.loads(line) for line in again.text.splitlines()]
        assert [without_identity(x) for x in replayed] == [without_identity(x) for x in lines]
        assert all(x["created_at"].endswith("Z") for x in replayed)


# --- in process: stored streams of every shape ---------------------------------------------------


def chat_stream(body: dict[str, Any], rng: st.DataObject) -> list[bytes]:
    """The stream an OpenAI-compatible upstream sends for the non-stream answer `body`:
    choices interleaved, text and tool-call arguments in pieces, each piece with its own
    log probabilities, the finish on its own chunk, then usage and `[DONE]`. A message
    without text (beside tool calls) says `"content": null` in its first delta, as
    OpenAI streams it."""
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
            "model": body["model"]}
    per_choice: list[list[dict[str, Any]]] = []
    for choice in body["choices"]:
        index, message = choice["index"], choice["message"]
        first = None if message.get("content") is None else ""
        deltas: list[dict[str, Any]] = [{"delta": {"role": "assistant", "content": first}}]
        tokens = (choice.get("logprobs") or {}).get("content")  # one per character
        text = message.get("content") or ""
        cuts = sorted(rng.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4)))
        for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
            if text[start:end]:
                delta: dict[str, Any] = {"delta": {"content": text[start:end]}}
                if tokens is not None:
                    delta["logprobs"] = {"content": tokens[start:end]}
                deltas.append(delta)
        for position, call in enumerate(message.get("tool_calls") or []):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            deltas.append({"delta": {"tool_calls": [{
                "index": position, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": arguments[:half]}}]}})
            deltas.append({"delta": {"tool_calls": [{
                "index": position, "function": {"arguments": arguments[half:]}}]}})
        deltas.append({"delta": {}, "finish_reason": choice["finish_reason"]})
        per_choice.append([{**base, "choices": [{"index": index, "finish_reason": None, **d}]}
                           for d in deltas])
    order = rng.draw(st.permutations([i for i, chunks in enumerate(per_choice)
                                      for _ in chunks]))
    chunks = [per_choice[i].pop(0) for i in order]
    chunks.append({**base, "choices": [], "usage": body["usage"]})
    return [json.dumps(c, separators=(",", ":")).encode() for c in chunks] + [b"[DONE]"]


word = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for index in range(draw(st.integers(1, 3))):
        message: dict[str, Any] = {"role": "assistant", "content": draw(word)}
        calls = draw(st.lists(st.tuples(st.sampled_from(["get_weather", "search"]),
                                        st.dictionaries(st.sampled_from("abc"), word)),
                              max_size=2))
        if calls:
            # each call with its `index`, as Ollama's whole answers have it
            message["tool_calls"] = [{"id": f"call_{index}_{n}", "index": n, "type": "function",
                                      "function": {"name": name,
                                                   "arguments": json.dumps(args)}}
                                     for n, (name, args) in enumerate(calls)]
            if not message["content"]:
                message["content"] = None
        choice: dict[str, Any] = {"index": index, "message": message,
                                  "finish_reason": "tool_calls" if calls else
                                  draw(st.sampled_from(["stop", "length"]))}
        if draw(st.booleans()) and message["content"]:
            choice["logprobs"] = {"content": [{"token": t, "logprob": -0.5, "bytes": None,
                                               "top_logprobs": []} for t in message["content"]]}
        choices.append(choice)
    return {"id": "chatcmpl-7", "object": "chat.completion", "created": 1700000000,
            "model": "m", "choices": choices,
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}


@settings(max_examples=150, deadline=None)
@given(chat_bodies(), st.data())
def test_a_whole_answer_assembled_from_a_stored_stream_is_the_upstreams(body, data):
    frames = chat_stream(body, data)
    entry = Entry("openai", "chat", "m", time.time(), codec="sse", frames=tuple(frames))
    replay.prepare(entry)
    for stored in (entry, decode_entry(encode_entry(entry))):  # warm, and from disk
        response = replay.serve_entry(stored, replay.Shape(stream=False, include_usage=False),
                                      {})
        response.finish()
        whole = json.loads(response.body)
        assert without_identity(whole) == without_identity(body)
        assert whole["id"].startswith("chatcmpl-") and whole["id"] != body["id"]


@pytest.mark.parametrize("text", ["\x00created_at\x00", "\x00id\x00 and \x00created\x00",
                                  '"created_at":"\x00created_at\x00"'])
def test_answer_text_that_spells_a_placeholder_is_served_as_the_upstream_said(text):
    """A whole answer is a template whose identity fields are filled per response: text
    that reads like one of its placeholders stays as it was (found by hypothesis)."""
    body = {"id": "chatcmpl-7", "object": "chat.completion", "created": 1700000000,
            "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": text}}]}
    native = {"model": "m", "created_at": "2024-01-01T00:00:00Z", "done": True,
              "message": {"role": "assistant", "content": text}}
    stored = [Entry("openai", "chat", "m", time.time(), body=json.dumps(body).encode()),
              Entry("openai", "chat", "m", time.time(), codec="sse", frames=(
                  json.dumps({**body, "object": "chat.completion.chunk", "choices": [
                      {"index": 0, "delta": {"role": "assistant", "content": text}}]}).encode(),
                  json.dumps({**body, "object": "chat.completion.chunk", "choices": [
                      {"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode(),
                  b"[DONE]")),
              Entry("ollama", "chat", "m", time.time(), body=json.dumps(native).encode())]
    for entry in stored:
        replay.prepare(entry)
        for served in (entry, decode_entry(encode_entry(entry))):
            response = replay.serve_entry(served, replay.Shape(False, False), {})
            response.finish()
            assert json.loads(response.body)["choices" if entry.surface == "openai"
                                             else "message"] == (
                body["choices"] if entry.surface == "openai" else native["message"])


@settings(max_examples=100, deadline=None)
@given(chat_bodies(), st.data(), st.booleans())
def test_a_stored_stream_replays_its_frames_with_a_new_identity(body, data, include_usage):
    frames = chat_stream(body, data)
    entry = Entry("openai", "chat", "m", time.time(), codec="sse", frames=tuple(frames))
    replay.prepare(entry)
    original = [json.loads(raw) if raw != b"[DONE]" else "[DONE]" for raw in frames]
    if not include_usage:
        original = [obj for obj in original if obj == "[DONE]" or obj["choices"]]
    for stored in (entry, decode_entry(encode_entry(entry))):
        response = replay.serve_entry(stored, replay.Shape(True, include_usage), {})
        out = [json.loads(f.raw) if not f.is_done else "[DONE]" for f in response.frames]
        assert [without_identity(o) for o in out] == [without_identity(o) for o in original]
        assert len({o["id"] for o in out if o != "[DONE]"}) == 1
        assert response.outcome == "complete"


def rewritten_by_parsing(rewriter: replay.Rewriter, raws: list[bytes]) -> list[Any]:
    """What `rewriter` must make of each frame: its JSON rewritten by `data` (None: not
    sent), as every frame of a live stream once was."""
    out = []
    for raw in raws:
        if raw == b"[DONE]":
            out.append("[DONE]")
            continue
        out.append(rewriter.data(json.loads(raw), stream=True))
    return out


@settings(max_examples=100, deadline=None)
@given(chat_bodies(), st.data(), st.booleans())
def test_a_live_stream_is_rewritten_as_if_every_frame_were_parsed(body, data, include_usage):
    """The frames a leader's client and its followers get while the upstream streams
    (tool calls with ids of their own, usage, created values that change, an error):
    rewritten in bytes where that is sure, the same objects as parsing each one."""
    frames = chat_stream(body, data)
    compact = {"separators": (",", ":")}  # as upstreams write them
    error = json.dumps({"id": body["id"], "created": body["created"],  # kept as it is
                        "error": {"message": "boom"}}, **compact).encode()
    later = json.dumps({**json.loads(frames[0]), "created": 1700000001}, **compact).encode()
    raws = [*frames[:-1], later, error, frames[-1]]
    rewriter = replay.Rewriter("openai", "chat", include_usage)
    got = []
    for raw in raws:
        out = rewriter.frame(Frame(raw))
        got.append(None if out is None else "[DONE]" if out.is_done else json.loads(out.raw))
    expected = rewritten_by_parsing(replay.Rewriter("openai", "chat", include_usage), raws)
    identity = {"id": rewriter.id, "created": rewriter.created}
    for one, want in zip(got, expected, strict=True):
        if isinstance(want, dict) and "error" not in want:
            want = {**want, **{key: identity[key] for key in identity if key in want}}
        assert one == want


def test_a_live_ollama_stream_gets_the_time_of_the_response():
    line = {"model": "m", "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": '"created_at":"x"'}, "done": False}
    raws = [json.dumps(line).encode(), json.dumps({"error": "boom"}).encode(),
            json.dumps({**line, "done": True, "eval_count": 3}).encode()]
    rewriter = replay.Rewriter("ollama", "chat", False)
    out = [json.loads(rewriter.frame(Frame(raw)).raw) for raw in raws]
    assert [o.get("created_at", "").startswith("20") and o.get("created_at") != line[
        "created_at"] for o in out] == [True, False, True]
    assert [{k: v for k, v in o.items() if k != "created_at"} for o in out] == [
        {k: v for k, v in json.loads(raw).items() if k != "created_at"} for raw in raws]


def test_replay_keeps_frames_that_are_not_json_and_odd_identities():
    """Frames the fast path cannot join (a NUL byte in an SSE comment), an id that also
    appears inside a frame, and created values that differ by frame: replayed right."""
    chunk = b'{"id":"x","object":"chat.completion.chunk","created":%d,"model":"m",' \
            b'"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}'
    cases = [
        [b": keep-alive \0", chunk % (1, b"a"), b"[DONE]"],
        [chunk % (1, b"a"), chunk % (2, b"b"), chunk % (12, b"c"), b"[DONE]"],
        [chunk % (1, b'\\"id\\":\\"x\\"'), b"[DONE]"],
    ]
    for frames in cases:
        verbatim = frozenset({0}) if frames[0].startswith(b":") else frozenset()
        entry = Entry("openai", "chat", "m", time.time(), codec="sse", frames=tuple(frames),
                      verbatim=verbatim)
        replay.prepare(entry)
        response = replay.serve_entry(entry, replay.Shape(True, False), {})
        out = list(response.frames)
        assert [f.raw for f in out if f.verbatim] == [frames[i] for i in verbatim]
        data = [json.loads(f.raw) for f in out if not f.verbatim and not f.is_done]
        assert len({d["id"] for d in data}) == 1 and data[0]["id"] != "x"
        assert len({d["created"] for d in data}) == 1
        assert [d["choices"][0]["delta"] for d in data] == [
            json.loads(raw)["choices"][0]["delta"] for i, raw in enumerate(frames)
            if i not in verbatim and raw != b"[DONE]"]


# --- the memory tier's byte budget -------------------------------------------------------------


def stream_entry(words: int) -> Entry:
    frames = tuple(json.dumps({"id": "c", "created": 1, "choices": [
        {"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}]}).encode()
        for i in range(words)) + (b"[DONE]",)
    entry = Entry("openai", "chat", "m", time.time(), codec="sse", frames=frames)
    replay.prepare(entry)
    return entry


def test_the_byte_budget_evicts_by_size_least_recently_used_first():
    small, big = stream_entry(10), stream_entry(400)
    assert entry_size(big) > 10 * entry_size(small)
    # what is derived from an entry counts: its assembled answer and its replay plan
    assert entry_size(big) > 2 * sum(map(len, big.frames))
    budget = entry_size(big) + 2 * entry_size(small) + entry_size(small) // 2
    memory = MemoryTier(capacity=1000, ttl=3600, max_bytes=budget)
    for key in ("a", "b", "c"):
        memory.put(key, stream_entry(10))
    memory.get("a")  # now the most recently used
    memory.put("big", big)
    assert memory.bytes <= budget
    assert ("big", "a", "c") == tuple(k for k in ("big", "a", "c") if k in memory)
    assert "b" not in memory  # evicted by size, least recently used first
    memory.put("huge", stream_entry(2000))  # larger than the whole budget: not kept
    assert "huge" not in memory and "big" in memory
    memory.put("big", stream_entry(20))  # replaced: its old size is given back
    assert memory.bytes == sum(entry_size(memory.get(k)) for k in list(memory.keys()))
    assert MemoryTier(capacity=1000, ttl=3600, max_bytes=0).capacity == 0  # 0: no tier
