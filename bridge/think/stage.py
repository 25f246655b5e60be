"""The think-filter stage: reasoning out of the answers of the four generation APIs.

`bridge/core/reasoning.py` decides what is reasoning in a text; this stage knows where
text and reasoning live in each API's payloads (OpenAI chat and completions, Ollama
chat and generate; whole bodies and stream events), cleans the history of requests,
and drops stream events left with nothing to say. It sits outside the cache: the cache
keeps what the upstream said, the filter applies on the way out, hits included.

Upstream reasoning fields (`reasoning`, `reasoning_content`, `thinking`) count as
reasoning like tagged text. A client that asks for reasoning (`bridge/think/request.py`;
a request silent about it: `--keep-reasoning`) gets all of it in its surface's fields:
`reasoning` and `reasoning_content` (OpenAI surface, in `message`, `delta` or a
completion's choice) or `thinking` (Ollama surface), never as tags in the text.

Whether a stream starts inside reasoning (the template wrote `<think>` into the prompt)
is decided from evidence (`bridge/think/evidence.py`) at its first content, unless the
upstream has already shown it puts reasoning in a field of its own: then the content is
plain answer. A whole body needs no decision: it shows it (`split_whole`). What each
output showed is learnt for the next requests of the model.

Logprobs follow their text: a token's entry goes out with the chunk that carries its
answer text, held and released with it, and goes with the reasoning or markup it stands
for (`ThinkFilter.spans` says where the answer came from).

While a stream hides reasoning (held back or dropped), its headers go out at once and an
empty event of its own shape at least every `--think-heartbeat` ms (`clean_frames`).

Hot path: once every choice of a stream is known to be in plain answer text (known to
start plain, past its think block, or reasoning in a field) and nothing is held, a frame
whose bytes show no tag, `<` or reasoning field is relayed without being parsed.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator

from bridge.core import events, instance, streaming
from bridge.core.exchange import Exchange, Frame, Route, encode_json
from bridge.core.pipeline import Context, Stage
from bridge.core.reasoning import (
    CLOSE,
    KEPT_REASONING_FIELDS,
    OLLAMA_REASONING_FIELD,
    OPEN,
    OPENAI_REASONING_FIELDS,
    ThinkFilter,
    model_starts_inside,
    starts_inside,
)
from bridge.core.settings import Settings
from bridge.think.evidence import (
    FILE_NAME,
    INSIDE,
    MAYBE,
    PLAIN,
    Evidence,
    ModelMemory,
)
from bridge.think.request import clean_history, reasoning_wish

# Where the answer text is, per API: (surface, endpoint) -> kind.
CHAT, COMPLETIONS, API_CHAT, API_GENERATE = "chat", "completions", "api_chat", "api_generate"
KINDS = {
    ("openai", "chat"): CHAT,
    ("openai", "completions"): COMPLETIONS,
    ("ollama", "chat"): API_CHAT,
    ("ollama", "generate"): API_GENERATE,
}
# Kinds whose stream may start inside reasoning: where the upstream has a field for it.
# Ollama drops reasoning on /v1/completions (there is none there), so its text never
# starts inside it and is never held for a `</think>` (a bare one is still removed).
HELD_KINDS = frozenset((CHAT, API_CHAT, API_GENERATE))
# Kinds of Ollama's own API: `think` says what the request wants of reasoning, the
# OpenAI fields (`reasoning_effort`, `reasoning`) are not its and Ollama ignores them.
NATIVE_KINDS = frozenset((API_CHAT, API_GENERATE))
# Keys of a stream choice / delta / Ollama message that say nothing when the text is empty.
_CHOICE_PLAIN = frozenset(("index", "delta", "text", "finish_reason", "logprobs"))
_DELTA_PLAIN = frozenset(("content", "role", *KEPT_REASONING_FIELDS["openai"]))
_MESSAGE_PLAIN = frozenset(("content", "role", OLLAMA_REASONING_FIELD))
# A chat stream event whose only choice holds only text, and maybe its role (Ollama's
# shape): the choices key last, these bytes around the text's JSON string.
_TEXT_AT = b'"choices":['
_TEXT_HEAD = b'"choices":[{"index":0,"delta":{"content":"'
_ROLE_TEXT_HEAD = b'"choices":[{"index":0,"delta":{"role":"assistant","content":"'
_TEXT_TAIL = b'"},"finish_reason":null}]}'
_scan_string = json.decoder.scanstring  # a JSON string's rest after its opening quote


def _text_only(raw: bytes) -> tuple[int, bool, str] | None:
    """For a chat stream event that says nothing but its only choice's text (and maybe
    its role, "assistant"): where its choices key starts, whether the role is there, and
    the text, decoded as parsing the whole event would decode it; None for any other
    event, and for one that is not valid JSON. Read off the bytes: byte searches and the
    text's own decoding, not the event's."""
    if not raw.endswith(_TEXT_TAIL):
        return None
    at = raw.rfind(_TEXT_AT)  # the last: no JSON string holds these unescaped quotes
    if at < 2 or raw[0] != 0x7B or raw[at - 1] != 0x2C:  # `{…,"choices":[…`
        return None
    if raw.startswith(_TEXT_HEAD, at):
        role, start = False, at + len(_TEXT_HEAD)
    elif raw.startswith(_ROLE_TEXT_HEAD, at):
        role, start = True, at + len(_ROLE_TEXT_HEAD)
    else:
        return None
    try:  # one JSON string, or a ValueError (a bad escape, bad UTF-8)
        string = raw[start:len(raw) - len(_TEXT_TAIL) + 1].decode()  # to its closing quote
        text, stop = _scan_string(string, 0)
    except ValueError:
        return None
    return (at, role, text) if stop == len(string) else None  # else: a quote inside


# How an answer that ended normally says so (OpenAI `finish_reason`, Ollama `done_reason`).
_STOPPED = "stop"


def may_hold_reasoning(raw: bytes) -> bool:
    """Whether a JSON body may hold think tags or reasoning fields (a cheap byte check).

    A body containing none of these bytes has no think tags and no reasoning field, even
    JSON-escaped (`<\\/think>`; any `\\u` escape is looked at the slow way): it passes
    unchanged, so it is not parsed and re-encoded. (Searches spelt out, not `any` over a
    tuple: this runs for every frame, and the generator costs more than the searches.)
    """
    return b"think" in raw or b"reasoning" in raw or b"\\u" in raw


_LT = ord("<")  # as an int: `in` finds it at once (`Frame.read`)


def _may_hold_tag(raw: bytes) -> bool:
    """`may_hold_reasoning`, or the start of a tag cut across stream frames. (Spelt out
    again in `clean_frames`' loop over passing frames, where a call per frame counts.)"""
    return _LT in raw or b"think" in raw or b"reasoning" in raw or b"\\u" in raw


@dataclass
class ThinkStats:
    """What the filter took out of one response, for the metrics."""

    blocks: int = 0
    chars: int = 0


class _Choice:
    """Filter state of one choice of one response."""

    __slots__ = ("filter", "saw_field", "field_chars", "emitted", "ended", "entries", "spans")

    def __init__(self) -> None:
        self.filter: ThinkFilter | None = None
        # logprobs entries of text fed to the filter and not decided yet, with the
        # offsets of their text, and where the answer came from since the oldest of them
        self.entries: deque[tuple[int, int, Any]] = deque()
        self.spans: deque[tuple[int, int]] = deque()
        self.saw_field = False  # the upstream sent reasoning in a field of its own
        self.field_chars = 0  # how much of it
        self.emitted = False  # an event of this choice went out (so did its role)
        self.ended = False  # finished: text after the end (if any) is plain

    def passing(self, start: str | None) -> bool:
        """Whether text without `<` in this choice passes unchanged, with the stream's
        `start` decision so far."""
        if self.filter is not None:
            return self.filter.passing
        return self.saw_field or self.ended or start == PLAIN

    @property
    def settled(self) -> bool:
        """Nothing held or waiting (text, logprobs): its end releases nothing."""
        return (self.filter is None or self.filter.passing) and not self.entries

    def feed(self, cleaner: ThinkCleaner, text: str, whole: bool) -> tuple[str, str]:
        if self.filter is None:
            # Decided at the first content. A whole text shows whether it starts inside;
            # an upstream that puts reasoning in a field does not start the content there.
            if whole:
                start = INSIDE if starts_inside(text) else PLAIN
            else:
                start = PLAIN if self.saw_field or self.ended else cleaner.start
            live = cleaner.keep_reasoning and start == INSIDE and not whole
            self.filter = ThinkFilter(start != PLAIN, live)
        return self.filter.feed(text)

    def queue(self, entries: list[Any], length: int, whole: bool) -> None:
        """Note the logprobs `entries` of the next `length` characters to be fed: each
        for its token's characters (a whole text, or a chunk whose tokens make its text),
        else each for the whole chunk."""
        at = self.filter.chars_in if self.filter is not None else 0
        per_token = whole or sum(map(_token_length, entries)) == length
        for entry in entries:
            if per_token:
                size = _token_length(entry)
                self.entries.append((at, at + size, entry))
                at += size
            else:
                self.entries.append((at, at + length, entry))

    def release(self, f: ThinkFilter | None, ended: bool) -> list[Any]:
        """The entries decided by what `f` handed out since the last call: those of
        tokens with answer text, in order; the others (reasoning, markup) are dropped."""
        spans, entries = self.spans, self.entries
        if f is not None and f.spans:
            if entries:
                spans.extend(f.spans)
            f.spans.clear()
        if not entries:
            return []
        decided = f.decided if f is not None and not ended else float("inf")
        kept = []
        while entries:
            start, end, entry = entries[0]
            while spans and spans[0][1] <= start:
                spans.popleft()
            if start == end or (spans and spans[0][0] < end):
                kept.append(entry)  # no text (kept), or some of it went out as answer
            elif end > decided:
                break  # its text is held: it waits with it
            entries.popleft()
        if not entries:
            spans.clear()
        return kept

    def finish(self, cleaner: ThinkCleaner, reason: Any) -> tuple[str, str]:
        """The end of this choice (`reason`: its finish reason, None when cut): what
        was held, and the stats and evidence it gave."""
        f, self.filter = self.filter, None
        if self.field_chars:  # reasoning the upstream put in a field: one block
            cleaner.stats.blocks += 1
            cleaner.stats.chars += self.field_chars
            self.field_chars = 0
        self.ended = True
        if f is None:
            return "", ""
        out = f.finish()
        cleaner.stats.blocks += f.blocks
        cleaner.stats.chars += f.chars_removed
        if f.first_tag == CLOSE:
            cleaner.verdict = INSIDE
        elif cleaner.verdict is None and (f.first_tag == OPEN or (
                reason == _STOPPED and f.chars_answer and not self.saw_field)):
            cleaner.verdict = PLAIN
        return out


@dataclass
class ThinkCleaner:
    """Cleans one response of one API kind, whole or as a stream of events.

    Never changes the objects it is given (the cache may hold them): a changed event or
    body is a new object; `event` returns None for an event that passes unchanged.
    """

    kind: str
    starts_inside: bool = False  # without `decide`: MAYBE when true, else PLAIN
    keep_reasoning: bool = False
    decide: Callable[[], str] | None = None  # PLAIN, MAYBE or INSIDE, asked once if needed
    switched: bool = False  # the request switched reasoning off
    choices: int = 1  # how many choices the response has (the request's `n`)
    stats: ThinkStats = field(default_factory=ThinkStats)
    verdict: str | None = None  # what the output showed: INSIDE, PLAIN or None
    _choices: dict[int, _Choice] = field(default_factory=dict)
    _last: dict[str, Any] | Frame | None = None  # the last event: parsed, or its frame
    _start: str | None = None

    @property
    def start(self) -> str:
        """How this response's streamed content starts: decided at its first content."""
        if self._start is None:
            if self.decide is not None:
                self._start = self.decide()
            else:
                self._start = MAYBE if self.starts_inside else PLAIN
        return self._start

    @property
    def passing(self) -> bool:
        """Whether a frame without tag-like bytes would pass unchanged: no choice holds
        anything, and each is known to be in plain answer text (the stream is known to
        start plain, or every choice has shown where it is: past its think block, or
        reasoning in a field of its own). A choice not seen yet may still start inside."""
        start = self._start
        if start != PLAIN and len(self._choices) < self.choices:
            return False
        for c in self._choices.values():  # a loop, not all(…): it runs for every frame
            if not c.passing(start):
                return False
        return True

    def _choice(self, index: Any) -> _Choice:
        c = self._choices.get(index)
        if c is None:
            c = self._choices[index] = _Choice()
        return c

    def close(self) -> None:
        """The response is over: count what choices never finished (a cut stream, or
        finish frames relayed unparsed) removed."""
        for c in self._choices.values():
            if c.filter is not None or c.field_chars:
                c.finish(self, None)

    @property
    def holding(self) -> bool:
        """Whether text of some choice is held back, waiting for the filter to decide."""
        return any(c.filter is not None and c.filter.pending for c in self._choices.values())

    def empty_event(self) -> dict[str, Any] | None:
        """An event of the stream's own shape that says nothing (what goes out while
        reasoning is removed and nothing else would): an empty delta or text on the
        OpenAI surface, an empty message or response on Ollama's. None before the first
        event, whose fields it takes."""
        last = self._last_event()
        if last is None:
            return None
        if self._openai:
            if self.kind == CHAT:
                c = self._choice(0)
                delta = {"content": ""} if c.emitted else {"role": "assistant", "content": ""}
                c.emitted = True
                choice = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                choice = {"text": "", "index": 0, "finish_reason": None}
            return {**{k: v for k, v in last.items() if k != "usage"}, "choices": [choice]}
        obj = {"model": last.get("model", ""), "created_at": streaming.ollama_time()}
        if self.kind == API_CHAT:
            obj["message"] = {"role": "assistant", "content": ""}
        else:
            obj["response"] = ""
        obj["done"] = False
        return obj

    @property
    def _text_key(self) -> str:
        return {CHAT: "content", COMPLETIONS: "text", API_CHAT: "content",
                API_GENERATE: "response"}[self.kind]

    @property
    def _openai(self) -> bool:
        return self.kind in (CHAT, COMPLETIONS)

    @property
    def _fields(self) -> tuple[str, ...]:
        return OPENAI_REASONING_FIELDS if self._openai else (OLLAMA_REASONING_FIELD,)

    @property
    def _out_fields(self) -> tuple[str, ...]:
        return KEPT_REASONING_FIELDS["openai" if self._openai else "ollama"]

    def _clean(self, c: _Choice, holder: dict[str, Any], end: bool, reason: Any = None,
               whole: bool = False, entries: list[Any] | None = None
               ) -> tuple[dict[str, Any], str, str, bool, list[Any] | None]:
        """Clean the text and reasoning of one holder (a message, delta, choice or
        Ollama object), ending the choice when `end` (with finish `reason`); `entries`:
        the logprobs that came with it (None: none). Returns (new holder, answer,
        reasoning, changed, logprobs entries to send with it: None when there are none,
        neither come nor released)."""
        new = holder
        reasoning = []
        field_chars = 0
        for key in self._fields:
            if key in holder:
                if new is holder:
                    new = dict(holder)
                value = new.pop(key)
                if isinstance(value, str) and value and value not in reasoning:
                    # the same text in two fields (as this bridge delivers it, to a
                    # client that may be another bridge) counts once
                    c.saw_field = True
                    field_chars += len(value)
                    reasoning.append(value)
        c.field_chars += field_chars
        key = self._text_key
        text = holder.get(key)
        has_text = isinstance(text, str) and bool(text)
        kept = None if entries is None else []
        if entries:
            # those of the reasoning in a field come first; kept only where it is
            n = _covering(entries, field_chars) if has_text else len(entries) * bool(field_chars)
            if self.keep_reasoning:
                kept += entries[:n]
            entries = entries[n:]
            if not has_text and entries:  # no text of their own (a tool call, say): kept,
                if c.entries:  # after those waiting for their text to be decided
                    c.queue(entries, 0, False)
                else:
                    kept += entries
        answer = ""
        if has_text:
            if entries:
                c.queue(entries, len(text), whole)
            answer, r = c.feed(self, text, whole)
            reasoning.append(r)
        f = c.filter
        if end:
            a, r = c.finish(self, reason)
            answer += a
            reasoning.append(r)
        released = c.release(f, end)
        if released:
            kept = (kept or []) + released
        joined = "".join(reasoning)
        keep = self.keep_reasoning and joined
        if answer != (text or "") or keep:
            if new is holder:
                new = dict(holder)
            if answer or key in holder:
                new[key] = answer
            if keep:
                new = _after(new, key, dict.fromkeys(self._out_fields, joined))
        return new, answer, joined if keep else "", new is not holder, kept

    # --- whole responses ------------------------------------------------------------

    def body(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The cleaned non-stream response body, or None when it is unchanged."""
        if self.kind in (CHAT, COMPLETIONS):
            choices = body.get("choices")
            if not isinstance(choices, list):
                return None
            chat, new_choices, changed = self.kind == CHAT, [], False
            for choice in choices:
                holder = choice.get("message") if chat and isinstance(choice, dict) else choice
                if isinstance(holder, dict):
                    c = self._choice(choice.get("index", 0))
                    entries = _entries_of(choice.get("logprobs"), False)
                    holder, _, _, touched, kept = self._clean(
                        c, holder, True, choice.get("finish_reason"), True, entries)
                    if touched:
                        choice = {**choice, "message": holder} if chat else holder
                        changed = True
                    if kept is not None and kept != entries:
                        choice = _with_logprobs(choice, kept, False)
                        changed = True
                new_choices.append(choice)
            return {**body, "choices": new_choices} if changed else None
        holder = body.get("message") if self.kind == API_CHAT else body
        if not isinstance(holder, dict):
            return None
        entries = _entries_of(body.get("logprobs"), True)
        holder, _, _, touched, kept = self._clean(self._choice(0), holder, True,
                                                  body.get("done_reason"), True, entries)
        moved = kept is not None and kept != entries
        if not (touched or moved):
            return None
        new = {**body, "message": holder} if self.kind == API_CHAT else holder
        return _with_logprobs(new, kept or [], True) if moved else new

    # --- streams --------------------------------------------------------------------

    def event(self, obj: Any) -> list[Any] | None:
        """Clean one stream event (the JSON of an SSE `data:` frame or an NDJSON line).

        Returns None when the event passes unchanged, else the events to send instead:
        none when nothing is left to say, or before an error event what was held back.
        """
        if not isinstance(obj, dict):
            return None
        if "error" in obj:  # an in-band error ends the stream: release what was held
            held = self.end()
            return [*held, obj] if held else None
        if self.kind in (CHAT, COMPLETIONS):
            return self._openai_event(obj)
        return self._ollama_event(obj)

    def end(self) -> list[dict[str, Any]]:
        """The stream ended (`[DONE]`, or cut): events carrying what was still held (in
        the shape of the last event, parsed only then)."""
        if self._last is None:
            return []
        if self.kind in (CHAT, COMPLETIONS):
            choices = []
            for index, c in self._choices.items():
                if c.settled:  # what `_clean` would make of its end: nothing but the counts
                    c.finish(self, None)
                    continue
                new, answer, kept, _, entries = self._clean(c, {}, end=True)
                if answer or kept or entries:
                    choice = {"index": index, "finish_reason": None,
                              **({"delta": new} if self.kind == CHAT else new)}
                    choices.append(_with_logprobs(choice, entries or [], False))
            last = self._last_event() if choices else None
            if last is None:
                return []
            base = {k: v for k, v in last.items() if k not in ("choices", "usage")}
            return [{**base, "choices": choices}]
        c = self._choice(0)
        if c.settled:
            c.finish(self, None)
            return []
        new, answer, kept, _, entries = self._clean(c, {}, end=True)
        last = self._last_event() if answer or kept or entries else None
        if last is None:
            return []
        obj = {k: last[k] for k in ("model", "created_at") if k in last}
        if self.kind == API_CHAT:
            obj["message"] = {"role": "assistant", **new}
        else:
            obj.update(new)
        obj["done"] = False
        return [_with_logprobs(obj, entries or [], True)]

    def _last_event(self) -> dict[str, Any] | None:
        """The last event seen, parsed; None when it is no JSON object."""
        if isinstance(self._last, Frame):
            self._last = self._last.data
        return self._last if isinstance(self._last, dict) else None

    def reasoning_sink(self) -> ThinkFilter | None:
        """The filter of the response's only chat choice while a frame that says nothing
        but reasoning text (without `<`) would just be dropped by `event` (inside a think
        block, for a client that does not keep it); None otherwise. Changes only with
        what `event` and `end` see."""
        if self.kind != CHAT or self.keep_reasoning or self.choices != 1:
            return None
        c = self._choices.get(0)
        f = c.filter if c is not None else None
        return f if f is not None and f.in_block else None

    def swallow(self, sink: ThinkFilter, frame: Frame) -> bool:
        """Drop `frame`, a frame without tag-like bytes, if it says nothing but reasoning
        text, as `event` would: read off its bytes (Ollama's event shape; any other is
        left to `event`), and counted as `event` would count it."""
        found = None if frame.verbatim else _text_only(frame.raw)
        if found is None or found[1]:
            return False
        sink.swallow(len(found[2]))
        self._last = frame
        return True

    def text_event(self, frame: Frame) -> list[Frame] | tuple[Frame, ...] | None:
        """What `event` makes of a chat stream event that says nothing but the only
        choice's text (and maybe its role), for a client that does not keep reasoning,
        read off its bytes (Ollama's event shape) and parsed only when its text changes:
        itself, nothing, or the event with the text the filter leaves. None for any
        other event, left to `event`."""
        if self.kind != CHAT or self.keep_reasoning or self.choices != 1 or frame.verbatim:
            return None
        found = _text_only(frame.raw)
        if found is None or b'"error"' in frame.raw[:found[0]]:  # an error: `event`'s
            return None
        _, role, text = found
        c = self._choice(0)
        self._last = frame
        answer = c.feed(self, text, False)[0] if text else ""  # its reasoning is dropped
        c.release(c.filter, False)
        if not answer and (not role or c.emitted):
            return ()  # nothing left to say
        c.emitted = True
        if answer == text:
            return (frame,)
        obj = frame.data
        choice = obj["choices"][0]
        return [Frame.of({**obj, "choices": [{**choice, "delta": {**choice["delta"],
                                                                   "content": answer}}]})]

    def _openai_event(self, obj: dict[str, Any]) -> list[Any] | None:
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            return None  # the usage chunk
        self._last = obj
        chat = self.kind == CHAT
        kept, changed = [], False
        for choice in choices:
            holder = choice.get("delta") if chat and isinstance(choice, dict) else choice
            if not isinstance(holder, dict):
                kept.append(choice)
                continue
            c = self._choice(choice.get("index", 0))
            reason = choice.get("finish_reason")
            finishing = reason is not None
            entries = _entries_of(choice.get("logprobs"), False)
            new, answer, reasoning, touched, logprobs = self._clean(c, holder, finishing,
                                                                    reason, entries=entries)
            if touched:
                choice = {**choice, "delta": new} if chat else new
                changed = True
            if logprobs is not None and logprobs != entries:
                choice = _with_logprobs(choice, logprobs, False)
                changed = True
            if (answer or reasoning or finishing or logprobs
                    or any(k not in _CHOICE_PLAIN for k in choice)
                    or (chat and any(k not in _DELTA_PLAIN for k in new))
                    or (chat and "role" in new and not c.emitted)):
                c.emitted = True
                kept.append(choice)
            else:
                changed = True
        if not changed:
            return None
        if not kept:
            # Nothing left to say. Its `usage`, if any, is not the final one (that comes
            # with `choices: []` and passes unchanged): a client must not mistake it.
            return []
        return [{**obj, "choices": kept}]

    def _ollama_event(self, obj: dict[str, Any]) -> list[Any] | None:
        chat = self.kind == API_CHAT
        holder = obj.get("message") if chat else obj
        if not isinstance(holder, dict):
            return None
        self._last = obj
        done = obj.get("done") is True
        entries = _entries_of(obj.get("logprobs"), True)
        new, answer, reasoning, touched, logprobs = self._clean(
            self._choice(0), holder, done, obj.get("done_reason"), entries=entries)
        if not (done or answer or reasoning or logprobs
                or (chat and any(k not in _MESSAGE_PLAIN for k in new))):
            return []
        moved = logprobs is not None and logprobs != entries
        if not (touched or moved):
            return None
        out = {**obj, "message": new} if chat else new
        return [_with_logprobs(out, logprobs or [], True) if moved else out]


class ThinkStage(Stage):
    """Pipeline stage: clean request history, then the response on its way out."""

    name = "think_filter"

    def __init__(self, settings: Settings, context: Context | None = None):
        self.keep_reasoning = settings.keep_reasoning
        self.start_models = settings.think_start_models
        self.heartbeat = settings.think_heartbeat / 1000
        self.upstream = context.upstream if context is not None else None
        self.evidence: Evidence | None = None  # opened per worker, in start()

    def start(self) -> None:
        self.evidence = Evidence(ModelMemory(instance.directory() / FILE_NAME),
                                 self.start_models)

    def on_request(self, ex: Exchange) -> None:
        kind = KINDS.get((ex.surface, ex.endpoint))
        if kind is None or not ex.is_model_request:
            return
        if clean_history(ex.payload):
            ex.replace_payload(ex.payload)
        native = kind in NATIVE_KINDS
        wish = reasoning_wish(ex.payload, native)  # False: the request switches it off
        switched = wish is False
        decide = partial(self._decide, ex.model, switched, ex.headers.get("authorization"),
                         ex.route) if kind in HELD_KINDS else None
        keep = self.keep_reasoning if wish is None else wish
        ex.notes["think"] = ThinkCleaner(kind, keep_reasoning=keep,
                                         decide=decide, switched=switched,
                                         choices=choice_count(ex.payload))
        ex.on_close(self._closed)

    def _decide(self, model: str, switched: bool, authorization: str | None,
                route: Route | None = None) -> str:
        """How a stream of `model` starts (called at its first content, if at all); a
        routed exchange asks the upstream that answers it."""
        if self.evidence is None:  # not started in a worker (a unit test): the name only
            return MAYBE if model_starts_inside(model, self.start_models) else PLAIN
        capabilities = None
        if self.upstream is not None:
            capabilities = partial(self.upstream.capabilities, authorization=authorization,
                                   target=route.current if route is not None else None)
        return self.evidence.start(model, switched, capabilities)

    def on_response(self, ex: Exchange) -> None:
        cleaner: ThinkCleaner | None = ex.notes.get("think")
        response = ex.response
        if cleaner is None or response is None or not response.ok:
            return
        if response.streaming:
            heartbeat = None if response.ready else self.heartbeat
            response.map_frames(lambda frames: clean_frames(cleaner, frames, heartbeat),
                                keeps_marks=True)
            return
        if not may_hold_reasoning(response.body):
            return
        # a body replayed from the cache: cleaned once per entry and way of cleaning
        memo_key = ("think", cleaner.kind, cleaner.keep_reasoning)
        memo = response.memo.get(memo_key) if response.memo is not None else None
        if memo is not None and memo[0] == response.body:
            _, cleaned_body, blocks, chars = memo
            cleaner.stats.blocks += blocks
            cleaner.stats.chars += chars
        else:
            data = response.json()
            cleaned = cleaner.body(data) if isinstance(data, dict) else None
            cleaned_body = None if cleaned is None else encode_json(cleaned) + b"\n"
            if response.memo is not None:
                response.memo[memo_key] = (response.body, cleaned_body, cleaner.stats.blocks,
                                           cleaner.stats.chars)
        if cleaned_body is not None:
            response.set_body(cleaned_body)

    def _closed(self, ex: Exchange) -> None:
        """Count what was removed, once the response is out (a stream's counts grow to its
        end), and remember what the output showed of the model."""
        cleaner: ThinkCleaner = ex.notes["think"]
        cleaner.close()
        stats = cleaner.stats
        if stats.blocks:
            events.emit("think.blocks_removed", stats.blocks)
        if stats.chars:
            events.emit("think.chars_removed", stats.chars)
        verdict = cleaner.verdict
        if verdict == PLAIN and cleaner.kind not in HELD_KINDS:
            verdict = None  # the upstream may have dropped reasoning there, unseen
        if self.evidence is not None and verdict is not None:
            self.evidence.learn(ex.model, verdict, cleaner.switched)


def _token_length(entry: Any) -> int:
    """How many characters of the text a logprobs entry stands for (its `token`)."""
    token = entry.get("token") if isinstance(entry, dict) else None
    return len(token) if isinstance(token, str) else 0


def _covering(entries: list[Any], length: int) -> int:
    """How many of the first `entries` stand for the first `length` characters."""
    count = total = 0
    for entry in entries:
        if total >= length:
            break
        total += _token_length(entry)
        count += 1
    return count


def _entries_of(logprobs: Any, native: bool) -> list[Any] | None:
    """The per-token entries of a `logprobs` value: Ollama's list, or OpenAI's
    `{"content": [...]}`; None when it holds none."""
    entries = logprobs if native else (logprobs.get("content") if isinstance(logprobs, dict)
                                       else None)
    return entries if isinstance(entries, list) else None


def _with_logprobs(container: dict[str, Any], entries: list[Any], native: bool
                   ) -> dict[str, Any]:
    """`container` (a choice, an Ollama object) with `entries` as its logprobs, or
    without logprobs when there are none."""
    out = dict(container)
    if not entries:
        out.pop("logprobs", None)
    elif native:
        out["logprobs"] = entries
    else:
        old = container.get("logprobs")
        out["logprobs"] = {**(old if isinstance(old, dict) else {}), "content": entries}
    return out


def _after(holder: dict[str, Any], key: str, fields: dict[str, Any]) -> dict[str, Any]:
    """`holder` with `fields` right after its `key` (at the end without it): where
    Ollama's structs put reasoning, after the text and before tool calls and the rest."""
    out: dict[str, Any] = {}
    for name, value in holder.items():
        out[name] = value
        if name == key:
            out.update(fields)
    out.update(fields)  # the place they took above, if `key` was there
    return out


def choice_count(payload: dict[str, Any]) -> int:
    """How many choices a response to `payload` has (OpenAI's `n`; Ollama: one)."""
    n = payload.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def clean_frames(cleaner: ThinkCleaner, frames: Iterator[Frame],
                 heartbeat: float | None = None) -> Iterator[Frame]:
    """The stream cleaned, frame by frame. Frames without tag-like bytes are not parsed
    once the filter is past its think block (relayed) or while it is inside it and they
    carry nothing but reasoning (dropped).

    Keeps the frames' `more` marks true: the last frame it sends of one upstream read
    goes out unmarked, even when the filter drops the frames after it (it holds one frame
    back while the read has more to come).

    With `heartbeat` (seconds): while the filter hides reasoning (it dropped the last
    frame, or holds text back), the headers go out at once if nothing did yet, and no
    more than `heartbeat` seconds pass without a frame going out: the wait for the next
    one is cut by an empty event of the stream's shape. Reads while nothing is hidden,
    and those of the rest of one upstream read, are plain reads, without a timer."""
    held: Frame | None = None  # the last frame to send, while more of its read follows
    # what the cleaner's state allows; it changes only with what `event` and `end` see
    passing, sink = cleaner.passing, cleaner.reasoning_sink()
    # the reasoning field of the kind's events (`reasoning…` or `thinking`): a tag needs a
    # `<`, bare or escaped, and a field of another kind is left as it is in any case
    field = b"reasoning" if cleaner.kind in (CHAT, COMPLETIONS) else b"think"
    reader = streaming.PacedReader(frames) if heartbeat else None
    hiding = False  # the last frame went nowhere, or text is held back
    sent = False  # anything went out (the headers with it)
    due = 0.0  # when an empty frame is due (monotonic), while hiding
    more = False  # the last frame read has more of its read after it
    seen, escaped, named = None, True, True  # the read looked in, and what it may hold
    try:
        while True:
            if passing and not hiding:
                # The hot path: nothing held or hidden, and frames without tag-like bytes
                # pass as they are, unparsed, each as the slow path below would pass it
                # (held while more of its read follows, so that its mark stays true), until
                # one may hold a tag: that one goes the slow way.
                for frame in frames:
                    raw = frame.raw
                    read = frame.read or raw  # looked in once per upstream read (`Frame.read`)
                    if read is not seen:
                        seen, escaped, named = read, b"\\u" in read, field in read
                    if _LT in raw or (escaped and b"\\u" in raw) or (named and field in raw):
                        break
                    if held is not None:
                        held.more = True  # `frame` follows it at once
                        yield held
                    if frame.more:
                        held = frame
                    else:
                        held = None
                        sent = True
                        yield frame
                else:
                    break  # the end of the stream
            elif hiding and not more and reader is not None:
                frame = reader.read(due)
                if frame is streaming.TIMED_OUT:
                    event = cleaner.empty_event()
                    if event is not None:
                        sent = True
                        yield Frame.of(event)
                    due = time.monotonic() + heartbeat
                    continue
            else:  # never while a read timed out: the filter is still hiding then
                frame = next(frames, None)
            if frame is None:
                break
            more = frame.more
            plain = (passing or sink is not None) and not _may_hold_tag(frame.raw)
            if plain and passing:
                outs: Any = (frame,)  # the hot path: nothing to change, not even parsed
                hiding = False
            else:
                if plain and sink is not None and cleaner.swallow(sink, frame):
                    outs = ()  # reasoning dropped, not parsed either
                else:
                    outs = _cleaned(cleaner, frame)
                    passing, sink = cleaner.passing, cleaner.reasoning_sink()
                if (not outs or cleaner.holding) != hiding:
                    hiding = not hiding
                    if hiding and heartbeat:  # counted from the first frame hidden
                        due = time.monotonic() + heartbeat
            for out in outs:
                if held is not None:
                    held.more = True  # `out` follows it at once
                    yield held
                held = out
            if held is not None and not more:
                held.more = False  # the read is over: nothing follows without waiting
                sent = True
                yield held
                held = None
                if hiding and heartbeat:
                    due = time.monotonic() + heartbeat
            elif hiding and not sent and reader is not None and held is None:
                sent = True
                yield streaming.flush()  # the headers now, not with the answer
    finally:
        if reader is not None:
            reader.close()
    if held is not None:
        held.more = False
        yield held
    for obj in cleaner.end():  # a stream cut without `[DONE]`: nothing is lost
        yield Frame.of(obj)


def _cleaned(cleaner: ThinkCleaner, frame: Frame) -> list[Frame] | tuple[Frame, ...]:
    """What one frame becomes, parsed (unless its bytes tell): itself, what the filter
    makes of it, or nothing."""
    if frame.is_done:
        return [*(Frame.of(obj) for obj in cleaner.end()), frame]
    answered = cleaner.text_event(frame)
    if answered is not None:
        return answered
    replaced = cleaner.event(frame.data)
    if replaced is None:
        return (frame,)
    return [Frame.of(obj) for obj in replaced]


def make_stage(settings: Settings, context: Context) -> ThinkStage | None:
    return None if settings.disable_think_filter else ThinkStage(settings, context)
