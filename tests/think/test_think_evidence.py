"""Tests of bridge/think/evidence.py and the whole-text rule: the order of the evidence,
what is learnt and how it is shared, and the one stripper the cache key uses too."""

from __future__ import annotations

import multiprocessing

import pytest

from bridge.cache.keys import canonical_request
from bridge.core.reasoning import ThinkFilter, split_whole, strip_history
from bridge.think.evidence import (
    INSIDE,
    MAYBE,
    PLAIN,
    Evidence,
    ModelMemory,
    normalized_model,
    switched_off,
)

USER = {"role": "user", "content": "Q"}


@pytest.mark.parametrize("payload, expected", [
    ({"think": False}, True),
    ({"think": True}, False),
    ({"reasoning_effort": "none"}, True),
    ({"reasoning_effort": "low"}, False),
    ({"reasoning": {"effort": "none"}, "reasoning_effort": "high"}, True),
    # a `reasoning` object wins over `reasoning_effort`, even without an effort (Ollama's
    # FromChatRequest: then the model's default, which thinks); a null one does not
    ({"reasoning": {}, "reasoning_effort": "none"}, False),
    ({"reasoning": {"effort": ""}, "reasoning_effort": "none"}, False),
    ({"reasoning": None, "reasoning_effort": "none"}, True),
    ({"messages": [{"role": "user", "content": "hi /no_think"}]}, True),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "/no_think"}]}]},
     True),
    ({"messages": [{"role": "user", "content": "/no_think"}, USER]}, False),  # not the last
    ({"messages": [{"role": "user", "content": "/no_think then /think"}]}, False),
    ({"prompt": "Q /no_think"}, True),
    ({"messages": "bad", "prompt": 3}, False),
])
def test_request_switches(payload, expected):
    assert switched_off(payload) is expected


@pytest.mark.parametrize("payload, expected", [
    ({"think": False}, True),
    ({"reasoning_effort": "none"}, False),  # not a field of Ollama's own API: ignored
    ({"reasoning": {"effort": "none"}}, False),
    ({"prompt": "Q /no_think"}, True),
])
def test_native_request_switches(payload, expected):
    assert switched_off(payload, native=True) is expected


class Upstream:
    """Capabilities as an upstream tells them, counting the questions."""

    def __init__(self, caps):
        self.caps, self.asked = caps, 0

    def __call__(self, model):
        self.asked += 1
        return self.caps


def test_the_order_of_the_evidence(tmp_path):
    evidence = Evidence(ModelMemory(tmp_path / "m.json"), "deepseek-r1|qwen3")
    cannot, thinking, unknown = Upstream(["completion"]), Upstream(["thinking"]), Upstream(None)
    # the upstream's capabilities decide, whatever the name, asked once per model
    assert evidence.start("llama3.2", False, cannot) == PLAIN and cannot.asked == 1
    assert evidence.start("llama3.2", True, cannot) == PLAIN and cannot.asked == 1
    assert evidence.start("gpt-oss:20b", False, thinking) == MAYBE and thinking.asked == 1
    # a request that switches reasoning off: a model that can reason may still start
    # inside (its template may write the opening tag whatever the switch says)
    assert evidence.start("qwen3", True, thinking) == MAYBE and thinking.asked == 2
    assert evidence.start("gpt-oss:20b", True, thinking) == MAYBE and thinking.asked == 2
    assert evidence.start("qwen3-coder", False, cannot) == PLAIN
    assert evidence.start("qwen3-coder:latest", False, cannot) == PLAIN and cannot.asked == 2
    assert evidence.start("qwen3", False, thinking) == MAYBE and thinking.asked == 2
    # an upstream that cannot tell: the name decides
    assert evidence.start("llama3.2:1b", False, unknown) == PLAIN
    assert evidence.start("deepseek-r1", False, unknown) == MAYBE
    assert evidence.start("deepseek-r1", False, unknown) == MAYBE and unknown.asked == 2
    # what the model showed: plain, then inside for good
    evidence.learn("deepseek-r1", PLAIN)
    assert evidence.start("deepseek-r1", False, unknown) == PLAIN
    evidence.learn("deepseek-r1", INSIDE)
    evidence.learn("deepseek-r1", PLAIN)
    assert evidence.start("deepseek-r1", False, unknown) == INSIDE
    # what requests without the switch showed says nothing of those with it, and the reverse
    assert evidence.start("deepseek-r1", True, unknown) == MAYBE
    evidence.learn("deepseek-r1", PLAIN, switched=True)
    assert evidence.start("deepseek-r1", True, unknown) == PLAIN
    assert evidence.start("deepseek-r1", False, unknown) == INSIDE
    evidence.learn("qwen3", INSIDE, switched=True)
    evidence.learn("qwen3", PLAIN, switched=True)
    assert evidence.start("qwen3", True, thinking) == INSIDE  # for good
    assert evidence.start("qwen3", False, thinking) == MAYBE
    evidence.learn("my-model", INSIDE)  # proof beats the name too
    assert evidence.start("my-model", False, None) == INSIDE


def _learn(path, model):
    Evidence(ModelMemory(path), "").learn(model, INSIDE)


def test_memory_is_shared_between_processes_and_stays_small(tmp_path):
    path = tmp_path / "m.json"
    memory = ModelMemory(path)
    assert memory.get("a:latest") == {}
    procs = [multiprocessing.get_context("fork").Process(target=_learn, args=(path, f"m{n}"))
             for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(10)
    assert all(memory.get(f"m{n}:latest") == {"starts": INSIDE} for n in range(4))
    assert normalized_model(" Qwen3 ") == "qwen3:latest"


@pytest.mark.parametrize("text, expected", [
    ("<think>abc", ("", "abc")),  # unclosed at the start: reasoning (the regexes kept it)
    ("abc</think>\n\nHi", ("Hi", "abc")),  # a `</think>` first proves it, for any model
    ("A <think>x</think> B", ("A B", "x")),
    ("Hi <think> there", ("Hi <think> there", "")),
    ("Hi", ("Hi", "")),
])
def test_one_rule_for_bodies_history_and_cache_keys(text, expected):
    assert split_whole(text) == expected
    assert strip_history(text) == expected[0]
    message = {"role": "assistant", "content": text, "reasoning_content": "r"}
    question = {"role": "user", "content": "Q"}
    canonical = canonical_request("openai", "chat", {"messages": [message, question]})
    assert canonical["request"]["messages"] == [{"role": "assistant", "content": expected[0]},
                                                question]
    # after the last user message (a tool loop), the reasoning field is sent: keyed
    canonical = canonical_request("openai", "chat", {"messages": [question, message]})
    assert canonical["request"]["messages"][1] == {**message, "content": expected[0]}


def test_live_reasoning_of_a_stream_known_to_start_inside():
    f = ThinkFilter(starts_inside=True, live=True)
    assert f.feed("Okay") == ("", "Okay")  # handed out as it comes...
    assert f.feed(", so.</th") == ("", ", so.")
    assert f.feed("ink>\n\nParis.") == ("Paris.", "")  # ...and not again at `</think>`
    assert f.finish() == ("", "") and f.first_tag == "</think>"
    wrong = ThinkFilter(starts_inside=True, live=True)
    assert wrong.feed("Paris.") == ("", "Paris.")
    assert wrong.finish() == ("Paris.", "")  # it was the answer after all: nothing lost
    assert wrong.first_tag is None
