"""The one reasoning rule: recognising and removing `<think>…</think>` reasoning markup,
and the names of the fields upstreams put reasoning in.

Pure text logic, no HTTP: `ThinkFilter` splits a stream of text pieces into answer and
reasoning pieces, `split_think` does the same for a whole text whose start is guessed,
and `split_whole` / `strip_history` apply the rule for whole texts (response bodies, the
history clients send back, cache keys). The think stage (`bridge/think/stage.py`)
applies them to the payloads of each API surface.

The rules (non-stream and stream give the same result for any way of cutting the text):

* Every `<think>…</think>` block is reasoning; the whitespace right after `</think>` is
  dropped with it. Text outside blocks is answer, byte for byte. The reasoning of a
  block is handed out without the whitespace at its start and end (the newlines a
  template writes around it), as Ollama's own parser does.
* Blocks are flat: inside a block, `<think>` is plain reasoning text and the first
  `</think>` closes it. A `</think>` outside any block is stray markup: it and the
  whitespace after it are dropped, the text around it stays answer (but see below for
  a `</think>` that comes before any `<think>`).
* Missing opening tag: a filter made with `starts_inside=True` (the caller's guess, e.g.
  from the model name) treats everything up to the first `</think>` as reasoning. That
  text is held back until the guess is confirmed: at `</think>` it becomes reasoning; if
  a `<think>` comes first, the model opens its blocks itself and the held text is answer;
  if the output ends with neither, the guess was wrong and all of it is the answer.
  So nothing is lost, but for such a wrong guess the answer arrives only at the end.
  With `live=True` (the caller knows the model starts inside and the client wants the
  reasoning) the held text is also handed out as reasoning while it waits; should it
  turn out to be answer after all, it is handed out again as answer.
* Whole texts (`split_whole`): the start is not guessed but read off the text: a
  `</think>` before any `<think>` proves the text started inside reasoning, whatever
  the model, so everything up to it (and the whitespace after it) is reasoning.
* A stream whose start was taken to be answer can meet such a `</think>` too, with the
  reasoning before it already sent: the tag is dropped but the whitespace after it is
  kept, so the answer is at least not glued to the reasoning. `first_tag` reports it,
  so that the caller can start that model inside reasoning next time.
* Unclosed block: a block opened before any answer text (only whitespace before it,
  e.g. a reasoning cut by `finish_reason: length`) is reasoning to the end — half a
  chain of thought is never shown as the answer. A `<think>` that comes after answer
  text is confirmed only by its `</think>`: what follows it is held back, and if the
  output ends first, the `<think>` and everything after it are answer after all.

Streaming adds no delay to answer text: a piece is forwarded at once except for a tail
that could be the start of a tag (at most `len("</think>") - 1` characters), and except
while a block awaits confirmation as described above.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

OPEN = "<think>"
CLOSE = "</think>"

# Where upstreams put reasoning besides tags in the text: Ollama's /v1 and vLLM's
# `reasoning`, DeepSeek's `reasoning_content`, Ollama's native `thinking`.
OPENAI_REASONING_FIELDS = ("reasoning", "reasoning_content")
OLLAMA_REASONING_FIELD = "thinking"
REASONING_FIELDS = (*OPENAI_REASONING_FIELDS, OLLAMA_REASONING_FIELD)
# Where kept reasoning is delivered, per surface: Ollama's names (`/v1` `reasoning`, native
# `thinking`), and on `/v1` DeepSeek's `reasoning_content` too, for clients that read that.
KEPT_REASONING_FIELDS = {"openai": OPENAI_REASONING_FIELDS, "ollama": (OLLAMA_REASONING_FIELD,)}
_MAX_HOLD = len(CLOSE) - 1

# States of ThinkFilter.
_OUT = 0  # outside any block: text is answer
_BLOCK = 1  # inside a block opened before any answer: text is reasoning, forwarded live
_MID = 2  # inside a block opened after answer text: held until `</think>` or the end
_IMPLICIT = 3  # maybe inside a block whose `<think>` the template wrote: held

DEFAULT_START_INSIDE_MODELS = r"deepseek-r1|qwq|qwen3"


def _tag_prefix_len(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags`."""
    n = len(text)
    p = text.find("<", max(0, n - _MAX_HOLD))
    while p != -1:
        tail = text[p:]
        for tag in tags:
            if tag.startswith(tail):
                return n - p
        p = text.find("<", p + 1)
    return 0


_BOTH = (OPEN, CLOSE)
_CLOSE_ONLY = (CLOSE,)


class ThinkFilter:
    """Streaming splitter of answer text and reasoning; one object per output stream.

    `feed(piece)` returns `(answer, reasoning)` for what can be decided now; `finish()`
    returns what was held back. Counters: `blocks` (reasoning blocks recognised),
    `chars_in`, `chars_answer`, and `chars_removed` (markup, reasoning and whitespace
    taken out of the answer). `first_tag` is the first tag met (`OPEN`, `CLOSE` or
    None): the evidence of whether the output started inside reasoning.

    `spans` lists where the answer text handed out came from: (start, end) offsets in
    all the text fed so far, in order (the answer is the input with parts left out,
    never reordered); the caller empties it as it reads it (what the logprobs of each
    token follow). What comes before offset `decided` will not be handed out any more.
    """

    __slots__ = (
        "_answered",
        "_carry",
        "_held",
        "_live",
        "_r_space",
        "_r_start",
        "_skip_ws",
        "_held_at",
        "_state",
        "blocks",
        "chars_answer",
        "chars_in",
        "first_tag",
        "spans",
    )

    def __init__(self, starts_inside: bool = False, live: bool = False) -> None:
        self._state = _IMPLICIT if starts_inside else _OUT
        self._live = live and starts_inside
        self.first_tag: str | None = None
        self._carry = ""  # a possible partial tag at the end of the last piece
        self._held: list[str] = []  # text of a _MID or _IMPLICIT block, not decided yet
        self._held_at = 0  # the input offset where that block's text (held, carried) starts
        self.spans: list[tuple[int, int]] = []
        self._skip_ws = False  # just after `</think>`: drop whitespace
        self._answered = False  # non-whitespace answer text has been emitted
        self._r_start = True  # no reasoning of the current block handed out yet
        self._r_space = ""  # whitespace at the end of the reasoning so far: held back
        self.blocks = 0
        self.chars_in = 0
        self.chars_answer = 0

    @property
    def chars_removed(self) -> int:
        return self.chars_in - self.chars_answer - self.pending

    @property
    def pending(self) -> int:
        """Characters fed but not yet emitted as answer or reasoning."""
        return len(self._carry) + sum(map(len, self._held))

    @property
    def decided(self) -> int:
        """The input offset up to which all is decided: what is held, carried, or the
        `<think>` of a block opened after answer text (answer again if it stays open)
        comes after it."""
        return self.chars_in - self.pending - (len(OPEN) if self._state == _MID else 0)

    @property
    def passing(self) -> bool:
        """Outside any block with nothing held: text without `<` would pass unchanged."""
        return self._state == _OUT and not self._carry and not self._skip_ws

    @property
    def in_block(self) -> bool:
        """Inside a block opened before any answer, nothing held: text without `<` is
        reasoning through and through (see `swallow`)."""
        return self._state == _BLOCK and not self._carry

    def swallow(self, length: int) -> None:
        """`feed` for `length` characters of text without `<`, `in_block`, whose
        reasoning the caller drops: only the counters change."""
        self.chars_in += length

    def feed(self, piece: str) -> tuple[str, str]:
        at = self.chars_in - len(self._carry)  # the input offset of `text`
        self.chars_in += len(piece)
        text = self._carry + piece if self._carry else piece
        self._carry = ""
        answer: list[str] = []
        reasoning: list[str] = []
        while text:
            state = self._state
            if state == _OUT:
                if self._skip_ws:
                    stripped = text.lstrip()
                    at += len(text) - len(stripped)
                    text = stripped
                    if not text:
                        break
                    self._skip_ws = False
                i_open = text.find(OPEN)
                i_close = text.find(CLOSE)
                if i_open == -1 and i_close == -1:
                    keep = _tag_prefix_len(text, _BOTH)
                    if keep:
                        self._carry = text[-keep:]
                        text = text[:-keep]
                    self._emit_answer(answer, text, at)
                    break
                if i_close == -1 or (i_open != -1 and i_open < i_close):
                    self._emit_answer(answer, text[:i_open], at)
                    at += i_open + len(OPEN)
                    self._open_block(at)
                    text = text[i_open + len(OPEN):]
                else:  # a stray `</think>`
                    self._emit_answer(answer, text[:i_close], at)
                    # The first tag: the text before it was reasoning, already sent as
                    # answer; keep the whitespace that separates it from the answer.
                    self._skip_ws = self._saw(CLOSE)
                    at += i_close + len(CLOSE)
                    text = text[i_close + len(CLOSE):]
            elif state == _BLOCK:
                i_close = text.find(CLOSE)
                if i_close == -1:
                    keep = _tag_prefix_len(text, _CLOSE_ONLY)
                    if keep:
                        self._carry = text[-keep:]
                        text = text[:-keep]
                    if text:
                        self._reason(reasoning, text)
                    break
                if i_close:
                    self._reason(reasoning, text[:i_close])
                self._r_space = ""
                self._state = _OUT
                self._skip_ws = True
                at += i_close + len(CLOSE)
                text = text[i_close + len(CLOSE):]
            else:  # _MID or _IMPLICIT: hold until decided
                i_close = text.find(CLOSE)
                i_open = text.find(OPEN) if state == _IMPLICIT else -1
                if i_open == -1 and i_close == -1:
                    keep = _tag_prefix_len(text, _BOTH if state == _IMPLICIT else _CLOSE_ONLY)
                    if keep:
                        self._carry = text[-keep:]
                        text = text[:-keep]
                    if text:
                        self._held.append(text)
                        if self._live and state == _IMPLICIT:
                            self._reason(reasoning, text)
                    break
                if i_close == -1 or (i_open != -1 and i_open < i_close):
                    # The model writes its own `<think>`: what came before it is answer.
                    self._saw(OPEN)
                    self._held.append(text[:i_open])
                    self._emit_answer(answer, "".join(self._held), self._held_at)
                    self._held = []
                    self._state = _OUT
                    at += i_open + len(OPEN)
                    self._open_block(at)
                    text = text[i_open + len(OPEN):]
                else:
                    self._saw(CLOSE)
                    if self._live and state == _IMPLICIT:  # the rest went out already
                        held = text[:i_close]
                    else:
                        self._held.append(text[:i_close])
                        held = "".join(self._held)
                    self._held = []
                    self._live = False
                    if held:
                        self._reason(reasoning, held)
                    self._r_space = ""
                    self.blocks += 1
                    self._state = _OUT
                    self._skip_ws = True
                    at += i_close + len(CLOSE)
                    text = text[i_close + len(CLOSE):]
        return "".join(answer), "".join(reasoning)

    def finish(self) -> tuple[str, str]:
        """End of the output: release what was held back, by the rules above."""
        carry, self._carry = self._carry, ""
        held = "".join(self._held) + carry
        self._held = []
        state, self._state = self._state, _OUT
        if state == _BLOCK:
            reasoning: list[str] = []
            self._reason(reasoning, held)
            self._r_space = ""
            return "", "".join(reasoning)
        at = self.chars_in - len(held)
        if state == _MID:
            held = OPEN + held
            at -= len(OPEN)
        out: list[str] = []
        self._emit_answer(out, held, at)
        return "".join(out), ""

    def _saw(self, tag: str) -> bool:
        """Note a tag met; whether it is the first one."""
        if self.first_tag is None:
            self.first_tag = tag
            return False
        return True

    def _open_block(self, at: int) -> None:
        """A `<think>` ends at input offset `at`."""
        self._saw(OPEN)
        self._r_start, self._r_space = True, ""
        if self._answered:
            self._state = _MID
            self._held_at = at
        else:
            self._state = _BLOCK
            self.blocks += 1

    def _reason(self, out: list[str], text: str) -> None:
        """Hand out reasoning text of the current block, without the whitespace at the
        block's start, and holding back the whitespace at its end until more follows."""
        if self._r_start:
            text = text.lstrip()
            if not text:
                return
            self._r_start = False
        body = text.rstrip()
        if not body:
            self._r_space += text
            return
        out.append(self._r_space + body if self._r_space else body)
        self._r_space = text[len(body):]

    def _emit_answer(self, out: list[str], text: str, at: int) -> None:
        if text:
            out.append(text)
            self.spans.append((at, at + len(text)))
            self.chars_answer += len(text)
            if not self._answered and not text.isspace():
                self._answered = True


def split_think(text: str, starts_inside: bool = False) -> tuple[str, str]:
    """Split a whole output into (answer, reasoning); same rules as `ThinkFilter`."""
    f = ThinkFilter(starts_inside)
    answer, reasoning = f.feed(text)
    answer_end, reasoning_end = f.finish()
    return answer + answer_end, reasoning + reasoning_end


def starts_inside(text: str) -> bool:
    """Whether a whole text proves it started inside reasoning: a `</think>` before any
    `<think>`."""
    i_close = text.find(CLOSE)
    if i_close == -1:
        return False
    i_open = text.find(OPEN, 0, i_close)
    return i_open == -1


def split_whole(text: str) -> tuple[str, str]:
    """Split a whole text (a response body, an earlier message) into (answer, reasoning):
    its start is read off the text, not guessed (see `starts_inside`)."""
    if "think>" not in text:
        return text, ""
    return split_think(text, starts_inside(text))


def strip_history(text: str) -> str:
    """The answer part of an earlier assistant message, for sending history upstream and
    for the cache key: the same rule as for response bodies."""
    return split_whole(text)[0]


def forwarded_history(messages: list[Any]) -> list[Any]:
    """A chat request's messages as they go upstream and into the cache key, as Ollama
    renders them (`server/prompt.go` and its templates): assistant messages keep their
    reasoning fields after the last user message (a tool loop's reasoning, which gpt-oss
    needs) and lose them before it, where Ollama drops them too; reasoning written as
    tags inside their text goes everywhere (`strip_history`). A message left unchanged
    is the same object, and so are the messages when none is an assistant's."""
    last_user, answered = -1, False
    for index, message in enumerate(messages):
        if isinstance(message, dict):
            role = message.get("role")
            if role == "user":
                last_user = index
            elif role == "assistant":
                answered = True
    if not answered:  # a first question, mostly: nothing to forward differently
        return messages
    return [_forwarded_message(message, index > last_user)
            for index, message in enumerate(messages)]


def _forwarded_message(message: Any, current: bool) -> Any:
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return message
    clean = message
    if not current and any(name in message for name in REASONING_FIELDS):
        clean = {name: value for name, value in message.items()
                 if name not in REASONING_FIELDS}
    content = message.get("content")
    if isinstance(content, str):
        text = strip_history(content)
        if text != content:
            clean = {**clean, "content": text}
    elif isinstance(content, list):
        parts = [{**part, "text": strip_history(part["text"])}
                 if isinstance(part, dict) and isinstance(part.get("text"), str)
                 and "think>" in part["text"] else part for part in content]
        if any(new is not old for new, old in zip(parts, content, strict=True)):
            clean = {**clean, "content": parts}
    return clean


@lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern[str] | None:
    return re.compile(pattern, re.IGNORECASE) if pattern else None


def model_starts_inside(model: str, pattern: str = DEFAULT_START_INSIDE_MODELS) -> bool:
    """Whether `model`'s name matches `pattern` (a regex searched case-insensitively) of
    models whose chat template writes the opening `<think>` into the prompt."""
    rx = _compile(pattern)
    return bool(rx and model and rx.search(model))
