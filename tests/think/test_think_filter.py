"""Tests of bridge/think/stage.py: where text and reasoning live in each API's payloads."""

import copy
import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_think_tags import chunked

from bridge.core import events
from bridge.core import settings as bridge_settings
from bridge.core.exchange import Exchange, Frame, Response
from bridge.core.reasoning import starts_inside as proves_inside
from bridge.think.request import clean_history, reasoning_wish
from bridge.think.stage import (
    API_CHAT,
    API_GENERATE,
    CHAT,
    COMPLETIONS,
    ThinkCleaner,
    ThinkStage,
    make_stage,
    may_hold_reasoning,
)


def run_stream(cleaner: ThinkCleaner, events: list) -> list:
    """Events in, events out, the way the stage wraps frames (`[DONE]` as a string)."""
    out = []
    for ev in events:
        if ev == "[DONE]":
            out += [*cleaner.end(), ev]
            continue
        before = copy.deepcopy(ev)
        replaced = cleaner.event(ev)
        assert ev == before, "the cleaner must not change what it is given"
        out += [ev] if replaced is None else replaced
    return out + cleaner.end()


def chat_chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def deltas(events: list) -> list:
    return [e if e == "[DONE]" else (e["choices"][0]["delta"] if e["choices"] else "usage")
            for e in events]


def answer_of(events: list, key: str = "content") -> str:
    return "".join(e["choices"][0]["delta"].get(key) or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))


# --- OpenAI chat streams ----------------------------------------------------------------

NEW_SHAPE_TAGS = [
    chat_chunk({"role": "assistant", "content": ""}),
    chat_chunk({"content": "<th"}),
    chat_chunk({"content": "ink>\n"}),
    chat_chunk({"content": "Okay"}),
    chat_chunk({"content": "\n</thi"}),
    chat_chunk({"content": "nk>\n\n"}),
    chat_chunk({"content": "Paris"}),
    chat_chunk({"content": "."}),
    chat_chunk({}, "stop"),
    {"id": "chatcmpl-1", "choices": [], "usage": {"total_tokens": 3}},
    "[DONE]",
]


def test_chat_stream_split_tags_new_shape():
    out = run_stream(ThinkCleaner(CHAT), NEW_SHAPE_TAGS)
    assert deltas(out) == [{"role": "assistant", "content": ""}, {"content": "Paris"},
                           {"content": "."}, {}, "usage", "[DONE]"]


def test_chat_stream_keep_reasoning():
    cleaner = ThinkCleaner(CHAT, keep_reasoning=True)
    out = run_stream(cleaner, NEW_SHAPE_TAGS)
    assert answer_of(out) == "Paris."
    assert answer_of(out, "reasoning_content") == answer_of(out, "reasoning") == "Okay"
    assert (cleaner.stats.blocks, cleaner.stats.chars) == (1, len("<think>\nOkay\n</think>\n\n"))


def test_chat_stream_no_opening_tag_needs_the_model_guess():
    events = [chat_chunk({"role": "assistant", "content": ""}),
              chat_chunk({"content": "Hm."}), chat_chunk({"content": "</think>\n\nA"}),
              chat_chunk({}, "stop"), "[DONE]"]
    assert answer_of(run_stream(ThinkCleaner(CHAT, starts_inside=True), events)) == "A"
    # Taken for plain, the reasoning went out before `</think>` showed it: the tag goes,
    # the answer is not glued to it, and the cleaner reports what the model does.
    cleaner = ThinkCleaner(CHAT)
    assert answer_of(run_stream(cleaner, events)) == "Hm.\n\nA"
    assert cleaner.verdict == "inside"


def test_chat_stream_wrong_guess_delivers_the_answer_with_the_finish_chunk():
    events = [chat_chunk({"role": "assistant", "content": ""}),
              chat_chunk({"content": "Par"}), chat_chunk({"content": "is."}),
              chat_chunk({}, "stop"), "[DONE]"]
    out = run_stream(ThinkCleaner(CHAT, starts_inside=True), events)
    assert deltas(out) == [{"role": "assistant", "content": ""}, {"content": "Paris."},
                           "[DONE]"]
    assert out[1]["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_reasoning_field_turns_the_guess_off():
    events = [chat_chunk({"role": "assistant", "content": "", "reasoning": "Okay"}),
              chat_chunk({"reasoning": " done."}),
              chat_chunk({"content": "Paris"}), chat_chunk({}, "stop"), "[DONE]"]
    out = run_stream(ThinkCleaner(CHAT, starts_inside=True), events)
    assert deltas(out) == [{"role": "assistant", "content": ""}, {"content": "Paris"}, {},
                           "[DONE]"]
    out = run_stream(ThinkCleaner(CHAT, starts_inside=True, keep_reasoning=True), events)
    assert deltas(out) == [{"role": "assistant", "content": "", "reasoning": "Okay",
                            "reasoning_content": "Okay"},
                           {"reasoning": " done.", "reasoning_content": " done."},
                           {"content": "Paris"}, {}, "[DONE]"]


def test_chat_stream_legacy_shape():
    def legacy(content, finish=None, **extra):
        return chat_chunk({"role": "assistant", "content": content, **extra}, finish)
    events = [legacy("", reasoning="Ok"), legacy("<think>x</thi"), legacy("nk>\n"),
              legacy("Hi"), legacy("", "stop"), "[DONE]"]
    out = run_stream(ThinkCleaner(CHAT), events)
    assert deltas(out) == [{"role": "assistant", "content": ""},
                           {"role": "assistant", "content": "Hi"},
                           {"role": "assistant", "content": ""}, "[DONE]"]


def test_chat_stream_unchanged_chunks_are_passed_as_they_are():
    events = [chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": "Hi"})]
    cleaner = ThinkCleaner(CHAT)
    assert [cleaner.event(e) for e in events] == [None, None]


def test_chat_stream_tool_calls_and_cut_streams():
    tool = {"tool_calls": [{"index": 0, "id": "c", "type": "function",
                            "function": {"name": "f", "arguments": "{}"}}]}
    events = [chat_chunk({"role": "assistant", "content": "<think>x</think>"}),
              chat_chunk({"content": "", **tool}), chat_chunk({"content": "a <"})]
    out = run_stream(ThinkCleaner(CHAT), events)  # no finish chunk, no [DONE]
    assert deltas(out) == [{"role": "assistant", "content": ""}, {"content": "", **tool},
                           {"content": "a "}, {"content": "<"}]
    assert out[-1]["choices"][0]["finish_reason"] is None and out[-1]["id"] == "chatcmpl-1"


def test_chat_stream_error_event_releases_what_was_held():
    error = {"error": {"message": "boom", "type": "api_error"}}
    cleaner = ThinkCleaner(CHAT, starts_inside=True)
    out = run_stream(cleaner, [chat_chunk({"content": "Answer"}), error])
    assert out[-1] == error and answer_of(out[:-1]) == "Answer"


# --- OpenAI completions, Ollama chat and generate -----------------------------------------

def test_completions_stream_and_body():
    def chunk(text, finish=None):
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    out = run_stream(ThinkCleaner(COMPLETIONS), [chunk("<think>a"), chunk("</think>B"),
                                                 chunk("", "stop"), "[DONE]"])
    assert [e if e == "[DONE]" else e["choices"][0]["text"] for e in out] == ["B", "", "[DONE]"]
    body = {"choices": [{"index": 0, "text": "<think>a</think>\nB", "finish_reason": "stop"}]}
    assert ThinkCleaner(COMPLETIONS).body(body)["choices"][0]["text"] == "B"


def test_chat_body_all_three_reasoning_shapes():
    def body(message):
        return {"id": "x", "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    for message in ({"role": "assistant", "content": "<think>r</think>\n\nA"},
                    {"role": "assistant", "content": "r</think>\n\nA"},
                    {"role": "assistant", "content": "A", "reasoning": "r"},
                    {"role": "assistant", "content": "A", "reasoning_content": "r"}):
        given = body(message)
        before = copy.deepcopy(given)
        out = ThinkCleaner(CHAT, starts_inside=True).body(given)
        assert out["choices"][0]["message"] == {"role": "assistant", "content": "A"}
        kept = ThinkCleaner(CHAT, starts_inside=True, keep_reasoning=True).body(given)
        assert kept["choices"][0]["message"] == {"role": "assistant", "content": "A",
                                                 "reasoning": "r", "reasoning_content": "r"}
        assert given == before
    plain = body({"role": "assistant", "content": "A"})
    assert ThinkCleaner(CHAT).body(plain) is None
    odd = {"choices": [None, {"index": 1, "message": None}, {"index": 2}], "usage": {}}
    assert ThinkCleaner(CHAT).body(odd) is None
    assert ThinkCleaner(COMPLETIONS).body(odd) is None


def test_ollama_chat_stream():
    def line(content, done=False, **extra):
        return {"model": "m", "created_at": "t",
                "message": {"role": "assistant", "content": content, **extra}, "done": done}
    events = [line("", thinking="Okay"), line("<think>x</think>"), line("\n\nParis"),
              line("", True, ), ]
    events[-1]["done_reason"] = "stop"
    out = run_stream(ThinkCleaner(API_CHAT), events)
    assert [e["message"] for e in out] == [{"role": "assistant", "content": "Paris"},
                                           {"role": "assistant", "content": ""}]
    out = run_stream(ThinkCleaner(API_CHAT, keep_reasoning=True), events)
    assert [e["message"].get("thinking") for e in out] == ["Okay", "x", None, None]


def test_ollama_generate_stream_wrong_guess_and_error_line():
    events = [{"model": "m", "response": "Hel", "done": False},
              {"model": "m", "response": "lo", "done": False}, {"error": "runner crashed"}]
    out = run_stream(ThinkCleaner(API_GENERATE, starts_inside=True), events)
    assert out == [{"model": "m", "response": "Hello", "done": False},
                   {"error": "runner crashed"}]


def test_ollama_bodies():
    chat = {"model": "m", "message": {"role": "assistant", "content": "A", "thinking": "r"},
            "done": True}
    assert ThinkCleaner(API_CHAT).body(chat)["message"] == {"role": "assistant",
                                                           "content": "A"}
    gen = {"model": "m", "response": "<think>r</think>\nA", "done": True, "context": [1]}
    assert ThinkCleaner(API_GENERATE, keep_reasoning=True).body(gen) == {
        "model": "m", "response": "A", "thinking": "r", "done": True, "context": [1]}


# --- history, settings, the stage ---------------------------------------------------------

def test_clean_history():
    payload = {"model": "m", "messages": [
        {"role": "user", "content": "<think>user text is theirs</think>"},
        {"role": "assistant", "content": "<think>r</think>\n\nA", "reasoning_content": "r"},
        {"role": "assistant", "content": "r2\n</think>\n\nB"},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>r</think>C"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": "Q"}]}
    assert clean_history(payload)
    assert [m["content"] for m in payload["messages"]] == [
        "<think>user text is theirs</think>", "A", "B", [{"type": "text", "text": "C"}], None,
        "Q"]
    assert "reasoning_content" not in payload["messages"][1]
    assert not clean_history(payload)


def test_history_keeps_the_reasoning_of_a_tool_loop_after_the_last_user_message():
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}
    payload = {"model": "m", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "thinking": "old"},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "reasoning": "r", "reasoning_content": "r",
         "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "<think>t</think>Wait.", "thinking": "t"}]}
    original = copy.deepcopy(payload["messages"])
    assert clean_history(payload)
    assert payload["messages"][1] == {"role": "assistant", "content": "Hello"}
    assert payload["messages"][3] == original[3]
    assert payload["messages"][5] == {"role": "assistant", "content": "Wait.", "thinking": "t"}
    assert not clean_history(payload)


@pytest.mark.parametrize("payload, wish", [
    ({}, None),
    ({"think": True}, True), ({"think": "high"}, True), ({"think": "low"}, True),
    ({"think": False}, False), ({"think": "bogus"}, None),
    ({"reasoning_effort": "high"}, True), ({"reasoning_effort": "minimal"}, True),
    ({"reasoning_effort": "none"}, False), ({"reasoning_effort": ""}, None),
    ({"reasoning": {"effort": "high"}}, True), ({"reasoning": {}}, True),
    ({"reasoning": {"effort": "none"}}, False),
    ({"reasoning": {}, "reasoning_effort": "none"}, True),  # the object wins, as on Ollama
    ({"think": True, "messages": [{"role": "user", "content": "Hi /no_think"}]}, False),
])
def test_what_a_request_says_about_reasoning(payload, wish):
    assert reasoning_wish(payload) is wish


@pytest.mark.parametrize("payload, wish", [
    ({"think": True, "reasoning_effort": "none"}, True),
    ({"reasoning_effort": "none"}, None), ({"reasoning_effort": "high"}, None),
    ({"reasoning": {"effort": "high"}}, None), ({"think": False}, False),
])
def test_a_native_request_says_it_by_think_alone(payload, wish):
    assert reasoning_wish(payload, native=True) is wish


def make_exchange(surface, endpoint, payload):
    body = json.dumps(payload).encode()
    return Exchange(surface=surface, endpoint=endpoint, method="POST", path="/x", query="",
                    headers={}, body=body, request_id="r", payload=payload)


def test_stage_cleans_history_and_response():
    settings = bridge_settings.defaults()
    stage = make_stage(settings, None)
    assert isinstance(stage, ThinkStage)
    ex = make_exchange("openai", "chat", {"model": "deepseek-r1:7b", "messages": [
        {"role": "assistant", "content": "<think>r</think>A"}, {"role": "user", "content": "Q"}]})
    stage.on_request(ex)
    assert json.loads(ex.body)["messages"][0]["content"] == "A"
    ex.response = Response(200, body=json.dumps({"choices": [
        {"index": 0, "message": {"role": "assistant", "content": "r</think>\n\nB"}}]}).encode())
    stage.on_response(ex)
    assert ex.response.json()["choices"][0]["message"]["content"] == "B"
    seen = []
    events.subscribe(listener := lambda name, value, labels: seen.append((name, value)))
    try:
        ex.close()
    finally:
        events.unsubscribe(listener)
    assert seen == [("think.blocks_removed", 1), ("think.chars_removed", len("r</think>\n\n"))]


def test_stage_wraps_streams_and_leaves_the_rest():
    stage = ThinkStage(bridge_settings.defaults())
    ex = make_exchange("ollama", "generate", {"model": "llama3.2", "prompt": "Q"})
    stage.on_request(ex)
    raw = [b'{"response":"<think>x</think>","done":false}', b'{"response":"A","done":false}',
           b'{"response":"","done":true}']
    ex.response = Response(200, frames=iter([Frame(r) for r in raw]), codec="ndjson")
    stage.on_response(ex)
    frames = list(ex.response.frames)
    # the headers at once (an empty frame, which writes nothing: the first frame is
    # hidden), then the untouched frames relayed byte for byte
    assert [f.raw for f in frames] == [b"", *raw[1:]]
    other = make_exchange("ollama", "embed", {"model": "m", "input": "x"})
    stage.on_request(other)
    assert "think" not in other.notes


def test_stage_cleans_a_replayed_body_once_per_entry_and_counts_every_replay():
    stage = ThinkStage(bridge_settings.defaults())
    template = (b'{"id":"@ID@","choices":[{"index":0,"message":{"role":"assistant",'
                b'"content":"<think>hm</think>\\n\\nA"}}]}\n')
    memo: dict = {}
    for n in range(3):
        ex = make_exchange("openai", "chat", {"model": "llama3", "messages": []})
        stage.on_request(ex)
        ex.response = Response(200, body=template, memo=memo,
                               stamp=lambda body, n=n: body.replace(b"@ID@", b"id-%d" % n))
        stage.on_response(ex)
        ex.response.finish()
        assert ex.response.json() == {"id": f"id-{n}", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "A"}}]}
        assert (ex.notes["think"].stats.blocks, ex.notes["think"].stats.chars) == (1, 19)
    assert len(memo) == 1
    other = make_exchange("openai", "chat", {"model": "llama3", "messages": []})
    stage.on_request(other)  # another body with the same memo: cleaned for itself
    other.response = Response(200, body=b'{"choices":[{"index":0,"message":{"content":'
                              b'"<think>x</think>B"}}]}', memo=memo)
    stage.on_response(other)
    assert other.response.json()["choices"][0]["message"]["content"] == "B"


@pytest.mark.parametrize("argv, expected", [
    ([], (False, False, "deepseek-r1|qwq|qwen3")),
    (["--disable-think-filter", "--keep-reasoning", "--think-start-models", ""],
     (True, True, "")),
])
def test_settings(argv, expected):
    s = bridge_settings.load(argv, environ={})
    assert (s.disable_think_filter, s.keep_reasoning, s.think_start_models) == expected
    assert (make_stage(s, None) is None) == s.disable_think_filter


def test_bad_pattern_is_refused_at_start():
    with pytest.raises(bridge_settings.SettingError, match="--think-start-models"):
        bridge_settings.load(["--think-start-models", "("], environ={})


@settings(max_examples=300, deadline=None)
@given(chunked(), st.booleans(), st.booleans(), st.booleans())
def test_any_chat_stream_gives_the_non_stream_answer(case, starts_inside, keep, legacy):
    text, pieces = case
    # A stream taken for plain cannot take back what went out before a `</think>`; a
    # whole body shows where it starts (test_chat_stream_no_opening_tag_needs_the_model_guess).
    assume(starts_inside or not proves_inside(text))
    role = {"role": "assistant"} if legacy else {}
    events = [chat_chunk({"role": "assistant", "content": ""}),
              *(chat_chunk({**role, "content": p}) for p in pieces),
              chat_chunk({**role, "content": ""} if legacy else {}, "length"), "[DONE]"]
    out = run_stream(ThinkCleaner(CHAT, starts_inside, keep), events)
    body = {"choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": text}}]}
    message = (ThinkCleaner(CHAT, starts_inside, keep).body(body) or body)["choices"][0]["message"]
    assert answer_of(out) == message["content"]
    assert answer_of(out, "reasoning_content") == message.get("reasoning_content", "")
    assert out[-1] == "[DONE]" and out[-2]["choices"][0]["finish_reason"] == "length"
    assert all(e["choices"][0]["delta"] for e in out[1:-2])  # nothing empty was sent


@settings(max_examples=300, deadline=None)
@given(chunked(), st.booleans(), st.booleans(), st.sampled_from(["chat", "generate"]))
def test_bodies_skipped_by_the_byte_check_are_the_ones_left_unchanged(case, starts_inside,
                                                                      keep, kind):
    """The stage leaves a body unparsed when its bytes show no think tag or reasoning
    field: the full cleaner must agree that such a body stays as it is, however encoded."""
    text, _ = case
    body = ({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
            if kind == "chat" else {"model": "m", "response": text, "done": True})
    cleaner = ThinkCleaner(CHAT if kind == "chat" else API_GENERATE, starts_inside, keep)
    unchanged = cleaner.body(body) is None
    for ascii_only in (False, True):
        if not may_hold_reasoning(json.dumps(body, ensure_ascii=ascii_only).encode()):
            assert unchanged


def test_a_plain_stream_is_relayed_without_parsing_once_decided():
    from bridge.think.stage import clean_frames

    raw = [b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
           b'{"choices":[{"index":0,"delta":{"content":"Hello"}}]}',
           b'{"choices":[{"index":0,"delta":{"content":" there"}}]}',
           b'{"choices":[{"index":0,"delta":{"content":" a <"}}]}',  # a tag may start
           b'{"choices":[{"index":0,"delta":{"content":"think>x</think>!"}}]}',
           b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', b"[DONE]"]
    frames = [Frame(r) for r in raw]
    out = list(clean_frames(ThinkCleaner(CHAT), iter(frames)))
    # decided at the first content; after it, frames with nothing tag-like are not parsed
    assert [f._data is Frame._UNPARSED for f in frames] == [False, False, True, False,
                                                              False, True, True]
    assert answer_of([f.data for f in out if not f.is_done]) == "Hello there a !"


def test_frames_after_a_think_block_are_relayed_without_parsing():
    """A reasoning model's stream (think block at the start, or reasoning in a field):
    once the block is over, answer frames with nothing tag-like are not parsed."""
    from bridge.think.stage import clean_frames

    def chunk(delta: str) -> bytes:
        return b'{"choices":[{"index":0,"delta":%s}]}' % delta.encode()

    tagged = [chunk('{"role":"assistant","content":""}'), chunk('{"content":"Okay, "}'),
              chunk('{"content":"let me think"}'), chunk('{"content":"</think>"}'),
              chunk('{"content":"\\n\\n"}'), chunk('{"content":"Paris"}'),
              chunk('{"content":" it is"}'), b"[DONE]"]
    fielded = [chunk('{"role":"assistant","content":"","reasoning":"Okay"}'),
               chunk('{"content":"","reasoning":" hmm"}'), chunk('{"content":"Paris"}'),
               chunk('{"content":" it is"}'), b"[DONE]"]
    for raw, parsed in ((tagged, [True] * 5 + [True, False, False]),
                        (fielded, [True, True, False, False, False])):
        frames = [Frame(r) for r in raw]
        out = list(clean_frames(ThinkCleaner(CHAT, starts_inside=True), iter(frames)))
        assert [f._data is not Frame._UNPARSED for f in frames] == parsed
        assert answer_of([f.data for f in out if not f.is_done]) == "Paris it is"
    # n=2: the second choice may still start inside its own block: everything is looked at
    frames = [Frame(r) for r in tagged[:-1]]
    out = list(clean_frames(ThinkCleaner(CHAT, starts_inside=True, choices=2), iter(frames)))
    assert all(f._data is not Frame._UNPARSED for f in frames)
    assert answer_of([f.data for f in out]) == "Paris it is"


def ollama_frames(contents: list[str]) -> list[Frame]:
    """A chat stream as Ollama writes it (Go's encoder: `<` as `\\u003c`), then `[DONE]`."""
    frames = []
    for i, content in enumerate(contents):
        delta = {"role": "assistant", "content": content} if i == 0 else {"content": content}
        raw = json.dumps({"id": "chatcmpl-7", "object": "chat.completion.chunk",
                          "created": 1, "model": "deepseek-r1:7b", "system_fingerprint": "fp",
                          "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                         separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
        frames.append(Frame(raw.encode()))
    return [*frames, Frame(b"[DONE]")]


REASONING_PIECES = ["<think>", "\nOkay, ", "the \"sky\"", " is blue… ", "so\n", "\\o/",
                    " Rayleigh", "</think>\n\nThe sky", " is blue", " (Rayleigh)."]


@pytest.mark.parametrize("start", ["plain", "maybe"])
def test_reasoning_frames_are_dropped_unparsed_with_the_same_result(start):
    """Frames inside a think block that only carry reasoning are dropped from their bytes,
    not parsed; the client gets the same answer and the metrics the same counts as when
    every frame is parsed (escapes and non-ASCII text counted as characters)."""
    from bridge.think.stage import clean_frames

    def cleaned(fast: bool) -> tuple[list[bytes], ThinkCleaner, list[Frame]]:
        frames = ollama_frames(REASONING_PIECES)
        cleaner = ThinkCleaner(CHAT, starts_inside=start == "maybe")
        if not fast:  # every frame the slow way
            cleaner.swallow = lambda sink, frame: False  # type: ignore[method-assign]
        out = [f.raw for f in clean_frames(cleaner, iter(frames))]
        return out, cleaner, frames

    fast_out, fast, frames = cleaned(True)
    slow_out, slow, _ = cleaned(False)
    assert fast_out == slow_out
    assert answer_of([json.loads(raw) for raw in fast_out if raw != b"[DONE]"]) == \
        "The sky is blue (Rayleigh)."
    assert (fast.stats, fast.verdict) == (slow.stats, slow.verdict)
    assert fast.stats.chars == len("".join(REASONING_PIECES[:8])) - len("The sky")
    unparsed = [f._data is Frame._UNPARSED for f in frames]
    assert unparsed[2:7] == [True] * 5  # the reasoning between the tags


TEXT_ONLY_STREAMS = {
    "reasoning first": REASONING_PIECES,
    "answer, a block, answer": ["", "Hello <b>x</b>", " and \"quotes\" é", "<think>hm",
                                " hm</think>", " world", "<think", ">a</think>b"],
    "answer only": ["", "The sky", " is blue", " (Rayleigh) \\o/"],
}


@pytest.mark.parametrize("start", ["plain", "maybe"])
@pytest.mark.parametrize("name", list(TEXT_ONLY_STREAMS))
def test_text_only_events_are_cleaned_from_their_bytes_with_the_same_result(start, name):
    """A stream event that says nothing but its text (Ollama's shape) is cleaned from its
    bytes: the client gets the same bytes, marks and counts as when every event is parsed,
    and an event is parsed only when the filter changes its text."""
    from bridge.think.stage import clean_frames

    def cleaned(fast: bool) -> tuple[list[tuple[bytes, bool]], ThinkCleaner, list[Frame]]:
        frames = ollama_frames(TEXT_ONLY_STREAMS[name])
        for frame in frames[:-2]:
            frame.more = True  # one upstream read, the last two frames another
        # a repeated role says nothing; an event with an error is an error
        frames[-1:-1] = [Frame(frames[1].raw.replace(b'{"content"',
                                                     b'{"role":"assistant","content"'))]
        cleaner = ThinkCleaner(CHAT, starts_inside=start == "maybe")
        if not fast:  # every event the slow way
            cleaner.swallow = lambda sink, frame: False  # type: ignore[method-assign]
            cleaner.text_event = lambda frame: None  # type: ignore[method-assign]
        out = [(f.raw, f.more) for f in clean_frames(cleaner, iter(frames))]
        cleaner.close()
        return out, cleaner, frames

    fast_out, fast, frames = cleaned(True)
    slow_out, slow, _ = cleaned(False)
    assert fast_out == slow_out
    assert (fast.stats, fast.verdict) == (slow.stats, slow.verdict)
    sent = {raw for raw, _ in fast_out}
    for frame in frames[:-1]:  # parsed only when it changed: else sent as it came, or not
        assert (frame._data is Frame._UNPARSED) or frame.raw not in sent, frame.raw
    assert sum(frame._data is Frame._UNPARSED for frame in frames) >= len(frames) // 2


def test_an_error_event_in_the_shape_of_a_text_event_ends_the_stream_as_an_error():
    """An event with an `error` beside a text-only choice is not read as text: what was
    held goes out before it, as for any error event."""
    from bridge.think.stage import clean_frames

    frames = ollama_frames(["hm", " the answer", "!"])
    frames[1] = Frame(frames[1].raw.replace(b'{"id"', b'{"error":{"message":"x"},"id"'))
    cleaner = ThinkCleaner(CHAT, starts_inside=True)  # "hm" held: reasoning, or answer?
    out = [json.loads(f.raw) for f in clean_frames(cleaner, iter(frames[:2]))]
    assert out[-1]["error"] == {"message": "x"}
    assert answer_of(out[:-1]) == "hm"


def test_the_last_frame_sent_of_one_upstream_read_is_unmarked():
    """Frames of one upstream read are marked `more` (the relay then writes them at once):
    whatever the filter drops, the last one it sends of a read is unmarked, so the relay
    never waits for the next read with frames in hand."""
    from bridge.think.stage import clean_frames

    frames = ollama_frames(["Hello", " there", "<think>", "hm", "</think>", "!"])
    # reads: [Hello, there, <think>] [hm] [</think>, !, DONE]
    for frame in (frames[0], frames[1], frames[4], frames[5]):
        frame.more = True
    sent = []
    for frame in clean_frames(ThinkCleaner(CHAT), iter(frames)):
        sent.append((frame.raw, frame.more))
    contents = [json.loads(raw)["choices"][0]["delta"].get("content") if raw != b"[DONE]"
                else "[DONE]" for raw, _ in sent]
    assert "".join(c for c in contents if c != "[DONE]") == "Hello there!"
    marks = [more for _, more in sent]
    # Hello (more follows in its read), " there" (the rest of its read is dropped: last)
    assert marks[:2] == [True, False]
    assert marks[-1] is False


def _entry(i: int, token: str) -> dict:
    return {"token": token, "logprob": -1.0 - i}


@settings(max_examples=300, deadline=None)
@given(chunked(), st.booleans())
def test_logprobs_of_a_stream_are_those_of_its_whole_body(case, starts_inside):
    # One token per chunk, as Ollama streams: the entries kept are those of the tokens
    # with answer text, the same ones streamed (each with the chunk that sends its first
    # answer character) as in the whole body, in order.
    text, pieces = case
    assume(starts_inside or not proves_inside(text))
    events = [{**chat_chunk({"content": p}),
               "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None,
                            "logprobs": {"content": [_entry(i, p)]}}]}
              for i, p in enumerate(pieces)]
    events = [chat_chunk({"role": "assistant", "content": ""}), *events,
              chat_chunk({}, "stop"), "[DONE]"]
    out = run_stream(ThinkCleaner(CHAT, starts_inside), events)
    streamed = [entry for e in out if isinstance(e, dict) for c in e["choices"]
                for entry in (c.get("logprobs") or {}).get("content") or []]
    body = {"choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text},
                         "logprobs": {"content": [_entry(i, p) for i, p in enumerate(pieces)]}}]}
    cleaned = (ThinkCleaner(CHAT, starts_inside).body(body) or body)["choices"][0]
    assert streamed == (cleaned.get("logprobs") or {}).get("content", [])
    if cleaned["message"]["content"] == text:  # nothing removed: every entry kept
        assert streamed == [_entry(i, p) for i, p in enumerate(pieces)]


def test_logprobs_of_a_chunk_of_several_tokens_follow_each_token():
    cleaner = ThinkCleaner(API_CHAT, starts_inside=True)
    tokens = ["Okay", "</think>", "\n\n", "Hi", "!"]
    out = run_stream(cleaner, [
        {"model": "m", "message": {"role": "assistant", "content": "".join(tokens[:4])},
         "done": False, "logprobs": [_entry(i, t) for i, t in enumerate(tokens[:4])]},
        {"model": "m", "message": {"role": "assistant", "content": "!"}, "done": False,
         "logprobs": [_entry(4, "!")]},
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True}])
    assert [(e["message"]["content"], [x["token"] for x in e.get("logprobs", [])])
            for e in out] == [("Hi", ["Hi"]), ("!", ["!"]), ("", [])]
