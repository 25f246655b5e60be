"""Tests of bridge/core/reasoning.py: the rules, edge cases, and stream == non-stream."""

import itertools
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.core.reasoning import (
    CLOSE,
    OPEN,
    ThinkFilter,
    model_starts_inside,
    split_think,
    strip_history,
)


def reference(text: str, starts_inside: bool = False) -> tuple[str, str]:
    """The rules of the module docstring, written over the whole text, char by char
    (the reasoning of each block without the whitespace around it)."""
    answer, reasoning = [], []
    i, n, answered, seen = 0, len(text), False, False

    def skip_ws(j: int) -> int:
        while j < n and text[j].isspace():
            j += 1
        return j

    if starts_inside:
        c, o = text.find(CLOSE), text.find(OPEN)
        if c != -1 and (o == -1 or c < o):
            reasoning.append(text[:c].strip())
            i = skip_ws(c + len(CLOSE))
            seen = True
        elif o == -1:
            return text, ""
    while i < n:
        if text.startswith(OPEN, i):
            seen = True
            c = text.find(CLOSE, i + len(OPEN))
            if c == -1:
                if answered:
                    answer.append(text[i:])
                else:
                    reasoning.append(text[i + len(OPEN):].strip())
                break
            reasoning.append(text[i + len(OPEN):c].strip())
            i = skip_ws(c + len(CLOSE))
        elif text.startswith(CLOSE, i):
            # the first tag: the whitespace after it separates the answer from the
            # reasoning that went out before it
            i = skip_ws(i + len(CLOSE)) if seen else i + len(CLOSE)
            seen = True
        else:
            answered = answered or not text[i].isspace()
            answer.append(text[i])
            i += 1
    return "".join(answer), "".join(reasoning)


def stream(pieces: list[str], starts_inside: bool = False) -> tuple[str, str, ThinkFilter]:
    f = ThinkFilter(starts_inside)
    answer, reasoning = [], []
    for p in pieces:
        a, r = f.feed(p)
        answer.append(a)
        reasoning.append(r)
    a, r = f.finish()
    return "".join(answer) + a, "".join(reasoning) + r, f


# Text made of answer fragments, think blocks, tags and pieces of tags.
FRAGMENTS = [OPEN, CLOSE, "<", "</", "<th", "<thi", "</thin", "think>", "nk>", ">", "\n",
             "\n\n", " ", "\t", "a", "Paris.", "é", "x<y", "<b>", "</b>", "<thinking>"]
texts = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=30
).map("".join)


@st.composite
def chunked(draw):
    text = draw(texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


# --- properties ---------------------------------------------------------------------

@settings(max_examples=1500, deadline=None)
@given(chunked(), st.booleans())
@example(("<think>x</think>\n\nAnswer", ["<think>x</thi", "nk>\n", "\nAnswer"]), False)
@example(("r</think>  A", ["r</", "think>", " ", " A"]), True)
def test_stream_equals_non_stream_for_any_chunking(case, starts_inside):
    text, pieces = case
    answer, reasoning, f = stream(pieces, starts_inside)
    assert (answer, reasoning) == split_think(text, starts_inside)
    assert f.pending == 0
    assert f.chars_removed == len(text) - len(answer)
    # where the answer came from (what a token's logprobs follow): in order, each part of
    # the input at most once
    assert "".join(text[start:end] for start, end in f.spans) == answer
    ends = [0, *(end for _, end in f.spans)]
    assert all(start >= end for (start, _), end in zip(f.spans, ends, strict=False))


@settings(max_examples=500, deadline=None)
@given(chunked(), st.booleans())
def test_answer_spans_come_out_only_once_decided(case, starts_inside):
    _, pieces = case
    f, decided = ThinkFilter(starts_inside), 0
    for p in pieces:
        f.feed(p)
        decided = f.decided
        assert all(end <= decided for _, end in f.spans)
        f.spans.clear()
    f.finish()
    assert all(start >= decided for start, _ in f.spans)  # nothing decided came out late


@settings(max_examples=1500, deadline=None)
@given(texts, st.booleans())
def test_non_stream_follows_the_written_rules(text, starts_inside):
    assert split_think(text, starts_inside) == reference(text, starts_inside)


@settings(max_examples=500, deadline=None)
@given(chunked())
def test_nothing_held_beyond_a_partial_tag_unless_awaiting_confirmation(case):
    _, pieces = case
    f = ThinkFilter()
    for p in pieces:
        f.feed(p)
        if f._state in (0, 1):  # _OUT, _BLOCK
            assert f.pending <= len(CLOSE) - 1


@given(st.text().filter(lambda t: "<" not in t))
def test_text_without_tags_passes_unchanged_and_at_once(text):
    f = ThinkFilter()
    assert f.feed(text) == (text, "")
    assert f.finish() == ("", "")
    assert f.chars_removed == 0 and f.blocks == 0


# --- edge cases of the wire-format reference ------------------------------------------

@pytest.mark.parametrize("text, starts_inside, expected", [
    ("<think>\nOkay.\n</think>\n\nParis.", False, ("Paris.", "Okay.")),
    ("Paris.", False, ("Paris.", "")),
    ("", False, ("", "")),
    # whitespace before the block and inside the answer is kept byte for byte
    ("\n<think>x</think>\n\n  Paris  \n", False, ("\nParis  \n", "x")),
    ("A <think>x</think> B", False, ("A B", "x")),
    ("<think>a</think>B<think>c</think>\nD", False, ("BD", "ac")),
    # 2. only </think>: with the model-name guess, everything before is reasoning
    ("Okay, so.\n</think>\n\nParis.", True, ("Paris.", "Okay, so.")),
    # ...without it, only the stray tag goes (the answer is not glued to the reasoning)
    ("Okay, so.\n</think>\n\nParis.", False, ("Okay, so.\n\n\nParis.", "")),
    # the guess was wrong (no tag at all): the whole answer is delivered
    ("Paris.", True, ("Paris.", "")),
    # the guess, but the model writes its own <think> (R1-0528)
    ("<think>\nhm\n</think>\n\nParis.", True, ("Paris.", "hm")),
    # 3. unclosed block at the start (cut by length): reasoning, no answer
    ("<think>\nOkay, the user asks", False, ("", "Okay, the user asks")),
    ("\n <think>cut", False, ("\n ", "cut")),
    ("<think>a</think>\n<think>cut", False, ("", "acut")),
    # ... after answer text, a lone <think> was text after all
    ("Use the <think> tag.", False, ("Use the <think> tag.", "")),
    ("The answer <think> and </think> gone", False, ("The answer gone", "and")),
    ("<think>a</think>B</think> C", False, ("BC", "a")),  # a later stray tag: ws goes
    # 4. nested tags: flat, the first </think> closes
    ("<think>a<think>b</think>c</think>d", False, ("cd", "a<think>b")),
    ("A</think>B", False, ("AB", "")),
    # look-alikes are text
    ("<thinking>x</thinking> <b>", False, ("<thinking>x</thinking> <b>", "")),
    ("a < b and c </ d", False, ("a < b and c </ d", "")),
    ("ends with <thi", False, ("ends with <thi", "")),
    ("<think>r</thi", False, ("", "r</thi")),
])
def test_edge_cases(text, starts_inside, expected):
    assert split_think(text, starts_inside) == expected
    assert reference(text, starts_inside) == expected
    # and one character at a time
    assert stream(list(text), starts_inside)[:2] == expected


def test_tag_split_across_chunks_like_the_reference_example():
    f = ThinkFilter(starts_inside=True)
    assert f.feed("Okay.") == ("", "")
    assert f.feed("</thi") == ("", "")
    assert f.feed("nk>\n") == ("", "Okay.")
    assert f.feed("\nPar") == ("Par", "")
    assert f.feed("is.") == ("is.", "")
    assert f.finish() == ("", "")
    assert (f.blocks, f.chars_removed) == (1, len("Okay.</think>\n\n"))


def test_explicit_reasoning_is_forwarded_live_and_answer_at_once():
    f = ThinkFilter()
    assert f.feed("<think>\nOk") == ("", "Ok")
    assert f.feed("ay</") == ("", "ay")  # only the possible partial tag waits
    assert f.feed("think>\n\nPa") == ("Pa", "")
    assert f.feed("ris <") == ("ris ", "")
    assert f.feed("3") == ("<3", "")
    assert f.finish() == ("", "")
    assert f.blocks == 1


def test_counters():
    f = ThinkFilter()
    text = "<think>ab</think>\n\nX<think>c</think> Y</think>Z"
    f.feed(text)
    f.finish()
    assert f.blocks == 2
    assert f.chars_in == len(text)
    assert f.chars_answer == len("XYZ")
    assert f.chars_removed == len(text) - 3


@pytest.mark.parametrize("text, expected", [
    ("<think>x</think>\n\nHi.", "Hi."),
    ("reasoning\n</think>\n\nHi.", "Hi."),  # R1 history with no opening tag
    ("Hi.", "Hi."),
    ("Use <think> tags.", "Use <think> tags."),
])
def test_strip_history(text, expected):
    assert strip_history(text) == expected


@pytest.mark.parametrize("model, pattern, expected", [
    ("deepseek-r1:7b", None, True),
    ("DeepSeek-R1-Distill-Qwen-7B", None, True),
    ("qwq:32b", None, True),
    ("qwen3:8b", None, True),
    ("qwen2.5", None, False),
    ("llama3.2", None, False),
    ("deepseek-r1:7b", "", False),
    ("my-reasoner", "reasoner$", True),
])
def test_model_starts_inside(model, pattern, expected):
    args = (model,) if pattern is None else (model, pattern)
    assert model_starts_inside(*args) is expected


def test_cost_per_chunk_is_a_few_microseconds():
    reasoning = [f" step{i}" for i in range(400)]
    answer = [f" word{i}" for i in range(400)]
    pieces = ["<think>", *reasoning, "</th", "ink>\n\n", *answer]
    best = float("inf")
    for _ in range(5):
        f = ThinkFilter()
        t0 = time.perf_counter()
        for p in pieces:
            f.feed(p)
        f.finish()
        best = min(best, (time.perf_counter() - t0) / len(pieces))
    assert best < 20e-6, f"{best * 1e6:.2f} µs per chunk"
