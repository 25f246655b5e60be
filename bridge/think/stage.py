"""The think-filter stage: reasoning out of the answers of the four generation APIs.

`bridge/core/reasoning.py` decides what is reasoning in a text; this stage knows where
text and reasoning live in each API's payloads (OpenAI chat and completions, Ollama
chat and generate; whole bodies and stream events), cleans the history of requests,
and drops stream events left with nothing to say. It sits outside the cache: the cache
keeps what the upstream said, the filter applies on the way out, hits included.

Upstream reasoning fields (`reasoning`, `reasoning_content`, `thinking`) count as
reasoning like tagged text. `--keep-reasoning` delivers all of it as `reasoning_content`
(OpenAI surface, in `message` and `delta`) or `thinking` (Ollama surface).

Whether an output starts inside reasoning (the template wrote `<think>` into the prompt)
is guessed from the model name (`--think-start-models`), unless the upstream shows it
puts reasoning in a field of its own before the first content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from bridge.core import events
from bridge.core.exchange import Exchange, Frame, encode_json
from bridge.core.pipeline import Context, Stage
from bridge.core.reasoning import ThinkFilter, model_starts_inside, strip_history
from bridge.core.settings import Settings

# Where the answer text is, per API: (surface, endpoint) -> kind.
CHAT, COMPLETIONS, API_CHAT, API_GENERATE = "chat", "completions", "api_chat", "api_generate"
KINDS = {
    ("openai", "chat"): CHAT,
    ("openai", "completions"): COMPLETIONS,
    ("ollama", "chat"): API_CHAT,
    ("ollama", "generate"): API_GENERATE,
}
# Upstream reasoning fields on the OpenAI surface: Ollama's and vLLM's, DeepSeek's.
_OPENAI_REASONING = ("reasoning", "reasoning_content")
_HISTORY_REASONING = (*_OPENAI_REASONING, "thinking")
# Keys of a stream choice / delta / Ollama message that say nothing when the text is empty.
_CHOICE_PLAIN = frozenset(("index", "delta", "text", "finish_reason", "logprobs"))
_DELTA_PLAIN = frozenset(("content", "role", "reasoning_content"))
_MESSAGE_PLAIN = frozenset(("content", "role", "thinking"))
# A body containing none of these bytes has no think tags and no reasoning field, even
# JSON-escaped (`<\/think>`; any `\u` escape is looked at the slow way): it passes
# unchanged, so it is not parsed and re-encoded.
_MAYBE_REASONING = (b"think", b"reasoning", b"\\u")


def may_hold_reasoning(raw: bytes) -> bool:
    """Whether a JSON body may hold think tags or reasoning fields (a cheap byte check)."""
    return any(marker in raw for marker in _MAYBE_REASONING)


@dataclass
class ThinkStats:
    """What the filter took out of one response, for the metrics."""

    blocks: int = 0
    chars: int = 0


def clean_history(payload: dict[str, Any]) -> bool:
    """Remove think blocks and reasoning fields from earlier assistant messages, in place.

    DeepSeek advises not to feed reasoning back (its API refuses `reasoning_content` in
    input), and a clean history makes identical conversations identical for the cache.
    Returns whether anything changed.
    """
    changed = False
    messages = payload.get("messages")
    for msg in messages if isinstance(messages, list) else ():  # else the upstream says 400
        if not isinstance(msg, dict) or msg.get("role") != "assistant":
            continue
        for key in _HISTORY_REASONING:
            if key in msg:
                del msg[key]
                changed = True
        content = msg.get("content")
        parts = content if isinstance(content, list) else [msg]
        key = "text" if isinstance(content, list) else "content"
        for part in parts:
            text = part.get(key) if isinstance(part, dict) else None
            if isinstance(text, str) and (clean := strip_history(text)) != text:
                part[key] = clean
                changed = True
    return changed


class _Choice:
    """Filter state of one choice of one response."""

    __slots__ = ("starts_inside", "filter", "saw_field", "emitted")

    def __init__(self, starts_inside: bool):
        self.starts_inside = starts_inside
        self.filter: ThinkFilter | None = None
        self.saw_field = False  # the upstream sent reasoning in a field of its own
        self.emitted = False  # an event of this choice went out (so did its role)

    def feed(self, text: str) -> tuple[str, str]:
        if self.filter is None:
            # Decided at the first content: an upstream that puts reasoning in a field
            # does not start the content inside reasoning.
            self.filter = ThinkFilter(self.starts_inside and not self.saw_field)
        return self.filter.feed(text)

    def finish(self, stats: ThinkStats) -> tuple[str, str]:
        f, self.filter = self.filter, None
        if f is None:
            return "", ""
        out = f.finish()
        stats.blocks += f.blocks
        stats.chars += f.chars_removed
        self.starts_inside = False  # text after the end (if any) is plain
        return out


@dataclass
class ThinkCleaner:
    """Cleans one response of one API kind, whole or as a stream of events.

    Never changes the objects it is given (the cache may hold them): a changed event or
    body is a new object; `event` returns None for an event that passes unchanged.
    """

    kind: str
    starts_inside: bool = False
    keep_reasoning: bool = False
    stats: ThinkStats = field(default_factory=ThinkStats)
    _choices: dict[int, _Choice] = field(default_factory=dict)
    _last: dict[str, Any] | None = None

    def _choice(self, index: Any) -> _Choice:
        c = self._choices.get(index)
        if c is None:
            c = self._choices[index] = _Choice(self.starts_inside)
        return c

    @property
    def _text_key(self) -> str:
        return {CHAT: "content", COMPLETIONS: "text", API_CHAT: "content",
                API_GENERATE: "response"}[self.kind]

    @property
    def _fields(self) -> tuple[str, ...]:
        return _OPENAI_REASONING if self.kind in (CHAT, COMPLETIONS) else ("thinking",)

    @property
    def _out_field(self) -> str:
        return "reasoning_content" if self.kind in (CHAT, COMPLETIONS) else "thinking"

    def _clean(self, c: _Choice, holder: dict[str, Any], end: bool
               ) -> tuple[dict[str, Any], str, str, bool]:
        """Clean the text and reasoning of one holder (a message, delta, choice or
        Ollama object): returns (new holder, answer, reasoning, changed)."""
        new = holder
        reasoning = []
        for key in self._fields:
            if key in holder:
                if new is holder:
                    new = dict(holder)
                value = new.pop(key)
                if isinstance(value, str) and value:
                    c.saw_field = True
                    reasoning.append(value)
        key = self._text_key
        text = holder.get(key)
        answer = ""
        if isinstance(text, str) and text:
            answer, r = c.feed(text)
            reasoning.append(r)
        if end:
            a, r = c.finish(self.stats)
            answer += a
            reasoning.append(r)
        joined = "".join(reasoning)
        keep = self.keep_reasoning and joined
        if answer != (text or "") or keep:
            if new is holder:
                new = dict(holder)
            if answer or key in holder:
                new[key] = answer
            if keep:
                new[self._out_field] = joined
        return new, answer, joined if keep else "", new is not holder

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
                    holder, _, _, touched = self._clean(c, holder, end=True)
                    if touched:
                        choice = {**choice, "message": holder} if chat else holder
                        changed = True
                new_choices.append(choice)
            return {**body, "choices": new_choices} if changed else None
        holder = body.get("message") if self.kind == API_CHAT else body
        if not isinstance(holder, dict):
            return None
        holder, _, _, touched = self._clean(self._choice(0), holder, end=True)
        if not touched:
            return None
        return {**body, "message": holder} if self.kind == API_CHAT else holder

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
        """The stream ended (`[DONE]`, or cut): events carrying what was still held."""
        if self._last is None:
            return []
        if self.kind in (CHAT, COMPLETIONS):
            choices = []
            for index, c in self._choices.items():
                new, answer, kept, _ = self._clean(c, {}, end=True)
                if answer or kept:
                    choices.append({"index": index, "finish_reason": None,
                                    **({"delta": new} if self.kind == CHAT else new)})
            if not choices:
                return []
            base = {k: v for k, v in self._last.items() if k not in ("choices", "usage")}
            return [{**base, "choices": choices}]
        new, answer, kept, _ = self._clean(self._choice(0), {}, end=True)
        if not (answer or kept):
            return []
        last = self._last
        obj = {k: last[k] for k in ("model", "created_at") if k in last}
        if self.kind == API_CHAT:
            obj["message"] = {"role": "assistant", **new}
        else:
            obj.update(new)
        obj["done"] = False
        return [obj]

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
            finishing = choice.get("finish_reason") is not None
            new, answer, reasoning, touched = self._clean(c, holder, finishing)
            if touched:
                choice = {**choice, "delta": new} if chat else new
                changed = True
            if (answer or reasoning or finishing
                    or any(k not in _CHOICE_PLAIN for k in choice)
                    or (chat and any(k not in _DELTA_PLAIN for k in new))
                    or (chat and "role" in new and not c.emitted)):
                c.emitted = True
                kept.append(choice)
            else:
                changed = True
        if not changed:
            return None
        if not kept and "usage" not in obj:
            return []
        return [{**obj, "choices": kept}]

    def _ollama_event(self, obj: dict[str, Any]) -> list[Any] | None:
        chat = self.kind == API_CHAT
        holder = obj.get("message") if chat else obj
        if not isinstance(holder, dict):
            return None
        self._last = obj
        done = obj.get("done") is True
        new, answer, reasoning, touched = self._clean(self._choice(0), holder, done)
        if not (done or answer or reasoning
                or (chat and any(k not in _MESSAGE_PLAIN for k in new))):
            return []
        if not touched:
            return None
        return [{**obj, "message": new} if chat else new]


class ThinkStage(Stage):
    """Pipeline stage: clean request history, then the response on its way out."""

    name = "think_filter"

    def __init__(self, settings: Settings):
        self.keep_reasoning = settings.keep_reasoning
        self.start_models = settings.think_start_models

    def cleaner(self, ex: Exchange) -> ThinkCleaner | None:
        kind = KINDS.get((ex.surface, ex.endpoint))
        if kind is None or not ex.is_model_request:
            return None
        return ThinkCleaner(kind, model_starts_inside(ex.model, self.start_models),
                            self.keep_reasoning)

    def on_request(self, ex: Exchange) -> None:
        cleaner = self.cleaner(ex)
        if cleaner is None:
            return
        if clean_history(ex.payload):
            ex.replace_payload(ex.payload)
        ex.notes["think"] = cleaner
        ex.on_close(_publish)

    def on_response(self, ex: Exchange) -> None:
        cleaner: ThinkCleaner | None = ex.notes.get("think")
        response = ex.response
        if cleaner is None or response is None or not response.ok:
            return
        if response.streaming:
            response.map_frames(lambda frames: clean_frames(cleaner, frames))
            return
        if not may_hold_reasoning(response.body):
            return
        # a body replayed from the cache: cleaned once per entry and way of cleaning
        memo_key = ("think", cleaner.kind, cleaner.starts_inside, cleaner.keep_reasoning)
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


def _publish(ex: Exchange) -> None:
    """Count what was removed, once the response is out (a stream's counts grow to its end)."""
    stats = ex.notes["think"].stats
    if stats.blocks:
        events.emit("think.blocks_removed", stats.blocks)
    if stats.chars:
        events.emit("think.chars_removed", stats.chars)


def clean_frames(cleaner: ThinkCleaner, frames: Iterator[Frame]) -> Iterator[Frame]:
    for frame in frames:
        if frame.is_done:
            for obj in cleaner.end():
                yield Frame.of(obj)
            yield frame
            continue
        replaced = cleaner.event(frame.data)
        if replaced is None:
            yield frame
        else:
            for obj in replaced:
                yield Frame.of(obj)
    for obj in cleaner.end():  # a stream cut without `[DONE]`: nothing is lost
        yield Frame.of(obj)


def make_stage(settings: Settings, context: Context) -> ThinkStage | None:
    return None if settings.disable_think_filter else ThinkStage(settings)
