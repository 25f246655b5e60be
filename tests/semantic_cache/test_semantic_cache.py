"""The semantic cache through real gunicorn bridges (2 gevent workers) in front of the
stand-in, whose embeddings are hashed bags of words: a question asked in other words is
answered from the cache with zero generations, and only when everything but its wording
matches; failures of the embedding upstream are plain misses; restarts and a second
instance on the same Redis keep the hits."""

from __future__ import annotations

import uuid

import ollama
import openai
import pytest
import requests
from helpers import metric_total, show_upstream_is_open, wait_for

from bridge.ollama_standin import Fault
from bridge.semantic_cache.lookup import INDEX_FILE

MODEL = "qwen3"
CHAT = "/v1/chat/completions"
EMBEDDER = "all-minilm"
# the embedding's bound at its most: a hit asserted never turns on how busy the machine is
SEMANTIC = ("--enable-cache", "--semantic-cache-model", EMBEDDER,
            "--semantic-cache-timeout", "60000")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def bridge(standin_server, tmp_path_factory, cache_dir):
    from bridge.serve.processes import start_bridge
    with start_bridge(*SEMANTIC, "--cache-dir", str(cache_dir), upstream=standin_server.url,
                      workers=2, log_dir=tmp_path_factory.mktemp("bridge")) as process:
        show_upstream_is_open(process)
        yield process


def nonce() -> str:
    """A word of its own per test: its questions share it, no other test's do."""
    return f"ref{uuid.uuid4().hex[:10]}"


def chat(bridge, content, *, model=MODEL, system=None, history=(), headers=None,
         **fields) -> requests.Response:
    messages = ([{"role": "system", "content": system}] if system else []) + list(history)
    messages.append({"role": "user", "content": content})
    answer = requests.post(bridge.url + CHAT, json={"model": model, "messages": messages,
                                                    **fields}, headers=headers, timeout=30)
    return answer


def text(answer: requests.Response) -> str:
    return answer.json()["choices"][0]["message"]["content"]


def streamed_text(answer: requests.Response) -> str:
    import json
    parts = []
    for line in answer.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


def test_a_paraphrase_is_a_semantic_hit_with_zero_generations(standin, bridge):
    word = nonce()
    first = chat(bridge, f"What is the capital of France? {word}")
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    generations = standin.count(CHAT)
    hits = metric_total(bridge.url, "bridge_cache_hits_total", tier="semantic")

    again = chat(bridge, f"what's the capital city of France {word}")

    assert again.status_code == 200
    assert again.headers["x-cache"] == "HIT-SEMANTIC"
    assert 0.8 <= float(again.headers["x-cache-similarity"]) < 1.0
    assert text(again) == text(first)
    assert standin.count(CHAT) == generations  # zero generations
    # counted by the worker that served it once it is back in its event loop
    wait_for(lambda: metric_total(bridge.url, "bridge_cache_hits_total", tier="semantic")
             == hits + 1, what="the semantic hit counted")
    assert metric_total(bridge.url, "bridge_semantic_embedding_calls_total", outcome="ok") >= 2
    assert metric_total(bridge.url, "bridge_semantic_similarity_count") >= 1
    # the console: its status counts the hit, its page has a place for it
    assert requests.get(bridge.url + "/status", timeout=10).json()["cache"]["hits"][
        "semantic"] >= 1
    assert 'id="hits-semantic"' in requests.get(bridge.url + "/console", timeout=10).text


def test_the_ollama_api_has_semantic_hits_too(standin, bridge):
    word = nonce()
    client = ollama.Client(host=bridge.url)
    first = client.chat(model=MODEL, messages=[
        {"role": "user", "content": f"How do I reset my password? {word}"}])
    generations = standin.count("/api/chat")
    again = client.chat(model=MODEL, messages=[
        {"role": "user", "content": f"I forgot my password, how can I reset it? {word}"}])
    assert again.message.content == first.message.content
    assert standin.count("/api/chat") == generations
    raw = requests.post(bridge.url + "/api/generate", timeout=30, json={
        "model": MODEL, "prompt": f"Reset my password: how? {word}", "stream": False})
    assert raw.headers["x-cache"] == "MISS"  # another endpoint: another scope


@pytest.mark.parametrize("other", [
    pytest.param({"content": "How long should bread dough rise? {word}"}, id="unrelated"),
    pytest.param({"model": "llama3.2"}, id="another-model"),
    pytest.param({"system": "Answer in French."}, id="another-system-prompt"),
    pytest.param({"history": ({"role": "user", "content": "Hello"},
                              {"role": "assistant", "content": "Hi! How can I help?"})},
                 id="another-earlier-turn"),
    pytest.param({"temperature": 0.2}, id="another-temperature"),
])
def test_only_the_wording_may_differ(standin, bridge, other):
    word = nonce()
    chat(bridge, f"What is the boiling point of water at sea level? {word}",
         system="Be brief.", history=({"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Hello!"}))
    case = {"model": MODEL, "system": "Be brief.",
            "history": ({"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello!"}), **other}
    content = case.pop("content", "At sea level, what is the boiling point of water? {word}")
    extra = {"temperature": case.pop("temperature")} if "temperature" in case else {}
    generations = standin.count(CHAT)
    answer = chat(bridge, content.format(word=word), **case, **extra)
    assert answer.status_code == 200
    assert answer.headers["x-cache"] == "MISS"
    assert "x-cache-similarity" not in answer.headers
    assert standin.count(CHAT) == generations + 1


def test_the_same_case_does_hit(standin, bridge):
    """The control of the test above: the same earlier turns, system prompt, model and
    temperature, the question in other words."""
    word = nonce()
    history = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"})
    chat(bridge, f"What is the boiling point of water at sea level? {word}",
         system="Be brief.", history=history, temperature=0.5)
    answer = chat(bridge, f"At sea level, what is the boiling point of water? {word}",
                  system="Be brief.", history=history, temperature=0.5)
    assert answer.headers["x-cache"] == "HIT-SEMANTIC"


def test_a_principal_without_entitlement_is_no_semantic_hit(standin, bridge):
    word = nonce()
    private = "deepseek-coder"  # nobody asked for it without a key in this module
    standin.configure(entitlements={private + ":latest": ["sk-a-0123456789"]})
    owner = {"authorization": "Bearer sk-a-0123456789"}
    first = chat(bridge, f"What is our refund policy? {word}", headers=owner, model=private)
    assert first.status_code == 200
    other = chat(bridge, f"What is the refund policy? {word}", model=private,
                 headers={"authorization": "Bearer sk-b-9876543210"})
    assert other.headers["x-cache"] == "MISS"
    assert other.status_code in (403, 404)  # the upstream's own refusal, not the answer
    assert text(first) not in other.text
    entitled = chat(bridge, f"What is the refund policy? {word}", headers=owner,
                    model=private)
    assert entitled.headers["x-cache"] == "HIT-SEMANTIC"


def test_a_stream_is_served_from_a_stored_whole_answer_and_vice_versa(standin, bridge):
    word = nonce()
    whole = chat(bridge, f"Which planet is the largest in the solar system? {word}")
    stream = chat(bridge, f"In the solar system, which planet is largest? {word}", stream=True)
    assert stream.headers["x-cache"] == "HIT-SEMANTIC"
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert streamed_text(stream) == text(whole)

    word = nonce()
    first = chat(bridge, f"Who painted the Mona Lisa? {word}", stream=True)
    assert first.headers["x-cache"] == "MISS"
    again = chat(bridge, f"The Mona Lisa: who painted it? {word}")
    assert again.headers["x-cache"] == "HIT-SEMANTIC"
    assert text(again) == streamed_text(first)


@pytest.mark.parametrize("fault", [
    pytest.param(Fault("status", 500, path="/api/embed"), id="failing"),
    pytest.param(Fault("refuse", path="/api/embed"), id="refused"),
    pytest.param(Fault("slow_headers", delay=30.0, path="/api/embed"), id="slower-than-bound"),
])
def test_the_embedding_upstream_down_makes_plain_misses(standin, make_bridge, tmp_path, fault):
    """An embedding that fails, or outlives the bound (1 s here, the stand-in holding it
    30 s), makes a plain miss with a 200."""
    bridge = make_bridge("--enable-cache", "--semantic-cache-model", EMBEDDER,
                         "--semantic-cache-timeout", "1000", "--cache-dir", str(tmp_path))
    show_upstream_is_open(bridge)
    word = nonce()
    chat(bridge, f"How many legs does a spider have? {word}")
    standin.push_fault(fault, times=4)
    generations = standin.count(CHAT)
    answer = chat(bridge, f"A spider has how many legs? {word}")
    assert answer.status_code == 200
    assert answer.headers["x-cache"] == "MISS"
    assert standin.count(CHAT) == generations + 1


def test_the_opt_outs(standin, bridge):
    word = nonce()
    chat(bridge, f"What is the speed of light in vacuum? {word}")
    paraphrase = f"In vacuum, what is the speed of light? {word}"
    assert chat(bridge, paraphrase, headers={"x-semantic-cache": "off"}
                ).headers["x-cache"] == "MISS"
    assert chat(bridge, paraphrase, headers={"cache-control": "no-store"}
                ).headers["x-cache"] == "BYPASS"
    assert chat(bridge, paraphrase, headers={"cache-control": "no-cache"}
                ).headers["x-cache"] == "MISS"
    image = [{"type": "text", "text": paraphrase},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    assert chat(bridge, image).headers["x-cache"] != "HIT-SEMANTIC"
    pending = ({"role": "user", "content": paraphrase},
               {"role": "assistant", "content": "",
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "lookup", "arguments": "{}"}}]})
    answer = requests.post(bridge.url + CHAT, timeout=30, json={
        "model": MODEL, "messages": [*pending, {"role": "tool", "tool_call_id": "call_1",
                                                "content": "299792458 m/s"}]})
    assert answer.headers["x-cache"] == "MISS"
    assert chat(bridge, f"What's the speed of light in a vacuum? {word}"
                ).headers["x-cache"] == "HIT-SEMANTIC"  # the entry is still there


def test_a_restart_keeps_semantic_hits_and_a_lost_index_is_rebuilt(standin_server, make_bridge,
                                                                    tmp_path):
    flags = (*SEMANTIC, "--cache-dir", str(tmp_path), "--cache-ttl", "600000")
    first = make_bridge(*flags, graceful_stop=True)
    show_upstream_is_open(first)
    word = nonce()
    stored = text(chat(first, f"What is the tallest mountain on Earth? {word}"))
    first.stop()
    assert (tmp_path / INDEX_FILE).exists()  # saved at the stop

    second = make_bridge(*flags)
    answer = chat(second, f"On Earth, what is the tallest mountain? {word}")
    assert answer.headers["x-cache"] == "HIT-SEMANTIC" and text(answer) == stored
    second.stop()

    (tmp_path / INDEX_FILE).unlink(missing_ok=True)
    third = make_bridge(*flags)
    answer = chat(third, f"Tallest mountain on Earth? {word}")
    assert answer.headers["x-cache"] == "HIT-SEMANTIC" and text(answer) == stored


def test_two_instances_on_one_redis_share_semantic_entries(standin, make_bridge, redis_server,
                                                          tmp_path):
    shared = ("--redis-url", redis_server.url, "--redis-prefix", f"t{uuid.uuid4().hex[:8]}")
    one = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path / "a"), *shared)
    two = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path / "b"), *shared)
    show_upstream_is_open(one)
    show_upstream_is_open(two)
    word = nonce()
    stored = text(chat(one, f"When did the Berlin Wall fall? {word}"))
    generations = standin.count(CHAT)
    answer = chat(two, f"When exactly did the Berlin Wall fall? {word}")
    assert answer.headers["x-cache"] == "HIT-SEMANTIC"
    assert text(answer) == stored
    assert standin.count(CHAT) == generations


def test_an_embedding_model_missing_upstream_is_one_warning_and_no_semantic_tier(
        standin, make_bridge, tmp_path):
    process = make_bridge("--enable-cache", "--cache-dir", str(tmp_path),
                          "--semantic-cache-model", "no-such-embedder")
    show_upstream_is_open(process)
    word = nonce()
    chat(process, f"What is the capital of Italy? {word}")
    answer = chat(process, f"what's the capital city of Italy {word}")
    assert answer.status_code == 200 and answer.headers["x-cache"] == "MISS"
    warned = wait_for(lambda: process.log().count("semantic cache off"), what="the warning")
    assert warned == 1
    assert "no-such-embedder" in process.log()


def test_the_semantic_cache_needs_the_response_cache(standin_server, tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "bridge", "--semantic-cache-model", EMBEDDER],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--enable-cache" in done.stderr


def test_the_openai_client_sees_the_hit(standin, bridge):
    word = nonce()
    with openai.OpenAI(base_url=bridge.url + "/v1", api_key="sk-test", max_retries=0) as oai:
        first = oai.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": f"How far away is the Moon? {word}"}])
        raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=[
            {"role": "user", "content": f"How far is the Moon away from us? {word}"}])
    assert raw.headers["x-cache"] == "HIT-SEMANTIC"
    assert raw.parse().choices[0].message.content == first.choices[0].message.content


def test_an_openai_compatible_upstream_is_asked_on_v1_embeddings(standin, make_bridge,
                                                                 tmp_path):
    routes = tmp_path / "upstreams.toml"
    routes.write_text(f'[[upstream]]\nname = "api"\nurl = "{standin.url}"\nmodels = ["*"]\n'
                      'api = "openai"\n')
    process = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path / "cache"),
                          "--upstreams", str(routes), upstream=None)
    show_upstream_is_open(process)
    word = nonce()
    embedded = standin.count("/v1/embeddings")
    stored = text(chat(process, f"What time zone is Tokyo in? {word}"))
    answer = chat(process, f"Tokyo is in what time zone? {word}")
    assert answer.headers["x-cache"] == "HIT-SEMANTIC" and text(answer) == stored
    assert standin.count("/v1/embeddings") >= embedded + 2


def test_an_upstream_without_embeddings_is_one_warning_and_no_semantic_tier(
        standin, make_bridge, tmp_path):
    """Anthropic's API has no embeddings: the tier stays off, the bridge serves on."""
    process = make_bridge(*SEMANTIC, "--cache-dir", str(tmp_path), "--upstream-api",
                          "anthropic")
    assert wait_for(lambda: process.log().count("semantic cache off"),
                    what="the warning") == 1
    assert "the anthropic API has none" in process.log()
    assert requests.get(process.url + "/health", timeout=10).ok
