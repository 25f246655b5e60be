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
# the embedding's bound at its most: a hit asserted never turns on how busy the machine is
SEMANTIC = ("--enable-cache", "--semantic-cache-model", "all-minilm",
            "--semantic-cache-timeout", "60000")


def ask(bridge, content: str, **fields) -> requests.Response:
    return requests.post(bridge.url + CHAT, timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": content}], **fields})


def answer_text(answer: requests.Response) -> str:
    return answer.json()["choices"][0]["message"]["content"]


def assert_semantic_hit(bridge, stored: str, paraphrase: str) -> None:
    """`paraphrase` (asked after `stored`) is answered from the cache with its answer."""
    first = ask(bridge, stored)
    again = ask(bridge, paraphrase)
    assert again.headers["x-cache"] == "HIT-SEMANTIC"
    assert answer_text(again) == answer_text(first)


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
    assert len({answer_text(answer) for answer in answers}) == 1
    assert standin.count(CHAT) == generations + 1


def test_shared_mode_client_keys(standin, make_bridge, tmp_path):
    """Shared mode: the embedding carries the bridge's upstream key (never the client's);
    with --cache-per-client-key a paraphrase by another client key is no semantic hit,
    and one by a key not entitled to the model is refused, never served."""
    import secrets

    from helpers import keys_command
    upstream_key = "sk-upstream-" + secrets.token_hex(8)
    standin.configure(api_key=upstream_key)
    state = tmp_path / "state"

    def create(name: str, *flags: str) -> str:
        done = keys_command(state, "create", name, *flags)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    alice, bob, coder = create("alice"), create("bob"), create("coder", "--models",
                                                                "deepseek-coder")
    bridge = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path / "cache"),
                         "--cache-per-client-key", "--enable-shared-mode", "--state-dir",
                         str(state), env={"BRIDGE_API_KEY": upstream_key})
    word = f"ref{uuid.uuid4().hex[:10]}"

    def by(key: str, content: str) -> requests.Response:
        return requests.post(bridge.url + CHAT, timeout=30, headers={
            "authorization": f"Bearer {key}"}, json={
            "model": MODEL, "messages": [{"role": "user", "content": content}]})

    first = by(alice, f"What is the capital of France? {word}")
    assert first.status_code == 200
    again = by(alice, f"what's the capital city of France {word}")
    assert again.headers["x-cache"] == "HIT-SEMANTIC"
    other = by(bob, f"what's the capital city of France {word}")
    assert other.status_code == 200 and other.headers["x-cache"] == "MISS"
    refused = by(coder, f"what's the capital city of France {word}")
    assert refused.status_code in (401, 403, 404) and "HIT" not in refused.headers.get(
        "x-cache", "")
    for name in ("semantic.sqlite", "semantic.usearch"):
        path = tmp_path / "cache" / name
        if path.exists():
            data = path.read_bytes()
            assert all(key.encode() not in data for key in (alice, bob, coder, upstream_key))


def test_a_huge_whitespace_or_non_ascii_question(standin, make_bridge, tmp_path):
    bridge = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path))
    word = f"ref{uuid.uuid4().hex[:10]}"
    assert ask(bridge, "   \n\t ").status_code in (200, 400)
    huge = ask(bridge, f"{word} " + "lorem ipsum dolor sit amet " * 4000)
    assert huge.status_code == 200
    assert_semantic_hit(bridge, f"Quelle est la capitale de la France ? {word}",
                        f"quelle est la capitale française de la France {word}")
    assert "Traceback" not in bridge.log()


def test_a_corrupted_index_is_rebuilt(standin, make_bridge, tmp_path):
    from bridge.semantic_cache.lookup import INDEX_FILE
    flags = (*SEMANTIC, "--cache-dir", str(tmp_path), "--cache-ttl", "600000")
    word = f"ref{uuid.uuid4().hex[:10]}"
    first = make_bridge(*flags, workers=1, graceful_stop=True)  # saves its index at stop
    stored = ask(first, f"What is the tallest mountain on Earth? {word}").json()
    first.stop()
    index = tmp_path / INDEX_FILE
    data = index.read_bytes()
    for broken in (data[: len(data) // 2], b"\0" * 64, b"not an index at all" * 50, b""):
        index.write_bytes(broken)
        again = make_bridge(*flags, workers=1)
        answer = ask(again, f"On Earth, what is the tallest mountain? {word}")
        assert answer.status_code == 200 and answer.headers["x-cache"] == "HIT-SEMANTIC"
        assert answer.json()["choices"][0]["message"]["content"] == stored["choices"][0][
            "message"]["content"]
        assert "Traceback" not in again.log()
        again.stop()


def test_bad_semantic_flags_stop_with_one_line(tmp_path):
    import subprocess
    import sys
    for flags in (("--semantic-cache-threshold", "1.5"), ("--semantic-cache-threshold", "x"),
                  ("--semantic-cache-threshold", "-0.1"), ("--semantic-cache-threshold", "nan"),
                  ("--semantic-cache-max-entries", "5"),
                  ("--semantic-cache-max-entries", "ten"), ("--semantic-cache-model", ""),
                  ("--semantic-cache-model", "   ")):
        done = subprocess.run([sys.executable, "-m", "bridge", *SEMANTIC, "--cache-dir",
                               str(tmp_path), *flags], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2, (flags, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (flags, done.stderr)
        assert flags[0] in done.stderr


def test_every_output_affecting_field_and_every_surface_scopes_a_hit(standin, make_bridge,
                                                                     tmp_path):
    """A paraphrase differing in any sampling, format, tool or reasoning field is a miss;
    the same on another client API is what the exact cache would do with it."""
    import anthropic
    import ollama
    bridge = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path))
    show_upstream_is_open(bridge)
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {}}}}
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    base = {"temperature": 0.3, "top_p": 0.9, "seed": 7, "max_tokens": 50}
    variants = {"temperature": {"temperature": 0.4}, "top_p": {"top_p": 0.5},
                "seed": {"seed": 8}, "max_tokens": {"max_tokens": 51},
                "stop": {"stop": ["\n"]}, "n": {"n": 2}, "logprobs": {"logprobs": True},
                "response_format": {"response_format": schema}, "tools": {"tools": [tool]},
                "tool_choice": {"tools": [tool], "tool_choice": "none"},
                "reasoning_effort": {"reasoning_effort": "low"},
                "an earlier assistant turn": {"history": "assistant"},
                "an earlier tool turn": {"history": "tool"}}
    for name, change in variants.items():
        word = f"ref{uuid.uuid4().hex[:10]}"
        assert ask(bridge, f"What is the capital of France? {word}", **base).status_code == 200
        control = ask(bridge, f"what's the capital city of France {word}", **base)
        assert control.headers["x-cache"] == "HIT-SEMANTIC", name
        fields = {**base, **change}
        history = fields.pop("history", None)
        messages = [{"role": "user", "content": f"what's the capital city of France {word}"}]
        if history == "assistant":
            messages[:0] = [{"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello!"}]
        elif history == "tool":
            messages[:0] = [{"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "", "tool_calls": [{
                                "id": "c1", "type": "function", "function": {
                                    "name": "lookup", "arguments": "{}"}}]},
                            {"role": "tool", "tool_call_id": "c1", "content": "Paris"}]
            fields["tools"] = [tool]
        answer = requests.post(bridge.url + CHAT, timeout=30, json={
            "model": MODEL, "messages": messages, **fields})
        assert answer.headers.get("x-cache") != "HIT-SEMANTIC", name
    # ollama's think and format
    client = ollama.Client(host=bridge.url)
    word = f"ref{uuid.uuid4().hex[:10]}"
    client.chat(model=MODEL, messages=[{"role": "user", "content": f"Who wrote Hamlet? {word}"}])
    for change in ({"think": True}, {"format": "json"}, {"options": {"temperature": 0.1}}):
        raw = requests.post(bridge.url + "/api/chat", timeout=30, json={
            "model": MODEL, "stream": False, **change,
            "messages": [{"role": "user", "content": f"Hamlet: who wrote it? {word}"}]})
        assert raw.headers.get("x-cache") != "HIT-SEMANTIC", change
    # the Anthropic client: a paraphrase hits as the exact cache would; a tool result never
    claude = anthropic.Anthropic(base_url=bridge.url, api_key="sk-ant-test", max_retries=0)
    word = f"ref{uuid.uuid4().hex[:10]}"
    claude.messages.create(model=MODEL, max_tokens=64, messages=[
        {"role": "user", "content": f"What is the speed of sound in air? {word}"}])
    raw = claude.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=[
        {"role": "user", "content": f"In air, what is the speed of sound? {word}"}])
    assert raw.headers.get("x-cache") == "HIT-SEMANTIC"  # the same native chat
    pending = claude.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=[
        {"role": "user", "content": f"In air, what is the speed of sound? {word}"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "343 m/s"}]}],
        tools=[{"name": "lookup", "input_schema": {"type": "object"}}])
    assert pending.headers.get("x-cache") != "HIT-SEMANTIC"
    responses = requests.post(bridge.url + "/v1/responses", timeout=30, json={
        "model": MODEL, "max_output_tokens": 64,
        "input": f"What's the speed of sound in air? {word}"})
    assert responses.status_code == 200


def test_a_large_index_is_rebuilt_while_serving(standin, make_bridge, tmp_path):
    """100,000 stored entries and no saved graph (lost, or a new instance of a Redis
    fleet): building the graph takes minutes, so it is built in the background; the
    bridge serves at once, and a question answered meanwhile is a semantic hit."""
    import sqlite3

    import numpy as np

    from bridge.ollama_standin.wire import EMBEDDING_DIMS
    from bridge.semantic_cache.store import SqliteStore
    SqliteStore(str(tmp_path), "all-minilm", EMBEDDING_DIMS, 100_000).close()
    vectors = np.random.default_rng(27).standard_normal((100_000, EMBEDDING_DIMS),
                                                        dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with sqlite3.connect(tmp_path / "semantic.sqlite") as db:
        db.executemany("INSERT INTO semantic (scope, key, vector) VALUES (?, ?, ?)",
                       ((f"old{i % 500}", f"qwen3\told{i}", vector.astype("<f4").tobytes())
                        for i, vector in enumerate(vectors)))
    bridge = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path))
    show_upstream_is_open(bridge)
    word = f"ref{uuid.uuid4().hex[:10]}"
    assert_semantic_hit(bridge, f"What is the capital of France? {word}",
                        f"what's the capital city of France {word}")
    assert "WORKER TIMEOUT" not in bridge.log()


def test_many_paraphrases_at_once(standin, make_bridge, tmp_path):
    """Twenty questions in other words, and their repeats, at once on two workers: every
    answer is a 200 with the text of its own question's first answer, nothing is held."""
    bridge = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path))
    show_upstream_is_open(bridge)
    word = f"ref{uuid.uuid4().hex[:10]}"
    topics = [f"topic{i}{word}" for i in range(10)]
    questions = [f"What is the meaning of {topic}?" for topic in topics] + \
        [f"what's the real meaning of {topic}" for topic in topics]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda q: ask(bridge, q), questions * 2))
    assert [answer.status_code for answer in answers] == [200] * len(answers)
    after = [ask(bridge, f"What is the meaning of {topic}?") for topic in topics]
    assert all(answer.headers["x-cache"].startswith("HIT") for answer in after)
    assert "Traceback" not in bridge.log()
