"""Serving an entry in the shape the client asked for, whatever shape it was stored in.

Entries hold what the upstream produced: the frames of a stream (the usual case, see
`bridge.cache.stage`) or a body. A streamed answer replays the stored frames with their
original boundaries; a whole answer is assembled from them (`assemble`). The reverse,
for an entry stored as a body, cuts the text at word boundaries (`split_body`).
Every response gets a fresh `id` and `created` (Ollama: `created_at`), and the usage
chunk only when the client's `stream_options.include_usage` asks for it.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Iterator

from bridge.cache.entry import ASSEMBLED, JOINED, REPLAY, SEPARATOR, Entry
from bridge.core import streaming
from bridge.core.exchange import Exchange, Frame, Replayable, Response, encode_json
from bridge.core.reasoning import OLLAMA_REASONING_FIELD as THINKING
from bridge.core.reasoning import REASONING_FIELDS
from bridge.core.streaming import ollama_time

OPENAI, OLLAMA = "openai", "ollama"
EMBEDDING_ENDPOINTS = frozenset({"embeddings", "embed"})
ID_PREFIXES = {"chat": "chatcmpl-", "completions": "cmpl-"}
TEXT_FIELDS = {"chat": "content", "completions": "text", "generate": "response"}
_WORDS = re.compile(r"\s*\S+|\s+")

BODY_CONTENT_TYPES = {OPENAI: "application/json", OLLAMA: "application/json; charset=utf-8"}


@dataclass(frozen=True)
class Shape:
    """What the client asked for: a stream or a whole body, and usage in streams."""

    stream: bool
    include_usage: bool

    @classmethod
    def of(cls, ex: Exchange) -> "Shape":
        options = ex.payload.get("stream_options") if isinstance(ex.payload, dict) else None
        include = isinstance(options, dict) and options.get("include_usage") is True
        return cls(stream=ex.wants_stream, include_usage=include)


def stream_codec(surface: str) -> str:
    return streaming.NDJSON if surface == OLLAMA else streaming.SSE


class Rewriter:
    """Per response: fresh identity on every frame or body, usage only when asked."""

    def __init__(self, surface: str, endpoint: str, include_usage: bool):
        self.surface = surface
        self.include_usage = include_usage
        self.endpoint = endpoint
        self.id = ID_PREFIXES.get(endpoint, "") + f"{random.getrandbits(96):024x}"
        self.created = int(time.time())
        # the upstream's `"id":…` and `"created":N` as its first parsed frame wrote them,
        # and what replaces them: the later frames of a live stream are rewritten in bytes
        self._fields: tuple[bytes, bytes, bytes, bytes] | None = None

    def fresh(self) -> "Rewriter":
        """Another response's rewriter, for the same client."""
        return Rewriter(self.surface, self.endpoint, self.include_usage)

    def data(self, data: dict[str, Any], stream: bool) -> dict[str, Any] | None:
        """The rewritten object (changed in place), or None when the client must not see it."""
        if self.surface == OLLAMA:
            if "created_at" in data:
                data["created_at"] = ollama_time()
            return data
        if "error" in data:
            return data
        if "id" in data:
            data["id"] = self.id
        if "created" in data:
            data["created"] = self.created
        if stream and not self.include_usage and "usage" in data:
            if data.get("choices") == []:
                return None
            del data["usage"]
        return data

    def frame(self, frame: Frame) -> Frame | None:
        if frame.verbatim or frame.is_done:
            return frame
        quick = self._in_bytes(frame.raw)
        if quick is not None:
            return Frame(quick)
        try:
            data = json.loads(frame.raw)  # never the shared parsed copy: callers may change it
        except ValueError:
            return frame
        if not isinstance(data, dict):
            return frame
        if self.surface == OPENAI and self._fields is None and "error" not in data:
            self._learn(data)
        data = self.data(data, stream=True)
        return None if data is None else Frame.of(data)

    def _learn(self, data: dict[str, Any]) -> None:
        upstream_id, created = data.get("id"), data.get("created")
        if isinstance(upstream_id, str) and type(created) is int:
            self._fields = (b'"id":' + encode_json(upstream_id), b'"created":%d' % created,
                            b'"id":' + encode_json(self.id), b'"created":%d' % self.created)

    def _in_bytes(self, raw: bytes) -> bytes | None:
        """`raw` rewritten as `data` would, without parsing it, when that is sure to give
        the same object: at most one `created_at` (Ollama); or one id and one `created`
        equal to the first frame's, and no error or usage to look at (OpenAI). Else None."""
        if self.surface == OLLAMA:
            count = raw.count(b'"created_at":')
            if count != 1:
                return raw if count == 0 and raw.startswith(b"{") else None
            fresh = b'"created_at":' + encode_json(ollama_time())
            out = _CREATED_AT_FIELD.sub(fresh, raw)
            return out if fresh in out else None
        fields = self._fields
        if fields is None or b'"error"' in raw or (
                not self.include_usage and b'"usage"' in raw):
            return None
        old_id, old_created, new_id, new_created = fields
        at = raw.find(old_created)
        if (raw.count(b'"id":') != 1 or old_id not in raw or raw.count(b'"created":') != 1
                or at < 0 or raw[at + len(old_created):at + len(old_created) + 1] not in
                _DELIMITERS):
            return None
        return raw.replace(old_id, new_id).replace(old_created, new_created)


# --- stream → body -----------------------------------------------------------------------


def _merge_tool_calls(calls: list[dict[str, Any]], pieces: list[Any]) -> None:
    """OpenAI streams a call's arguments in pieces under one `index`; Ollama sends whole calls."""
    for piece in pieces:
        if not isinstance(piece, dict):
            continue
        index = piece.get("index")
        same = next((call for call in calls if index is not None and call.get("index") == index
                     and "function" in piece and isinstance(piece["function"], dict)
                     and "name" not in piece["function"]), None)
        if same is None:
            calls.append(copy.deepcopy(piece))
            continue
        function = same.setdefault("function", {})
        for name, value in piece["function"].items():
            if isinstance(value, str) and isinstance(function.get(name), str):
                function[name] += value
            else:
                function[name] = value


def _merge(message: dict[str, Any], delta: dict[str, Any]) -> None:
    """Add one delta to the message so far. A null field means "nothing yet" (vLLM and
    others send every field in every delta): a later value replaces it, it never
    replaces a value."""
    for name, value in delta.items():
        if value is None:
            message.setdefault(name, None)
        elif name == "tool_calls" and isinstance(value, list):
            calls = message.get("tool_calls")
            if not isinstance(calls, list):
                calls = message["tool_calls"] = []
            _merge_tool_calls(calls, value)
        elif name == "role":
            if value:
                message["role"] = value
        elif isinstance(value, str):
            previous = message.get(name)
            message[name] = (previous if isinstance(previous, str) else "") + value
        else:
            message[name] = value


def _drop_empty(holder: dict[str, Any]) -> dict[str, Any]:
    for name in (*REASONING_FIELDS, "tool_calls", "images"):
        if holder.get(name) in ("", [], None) and name in holder:
            del holder[name]
    return holder


def _merge_logprobs(choice: dict[str, Any], logprobs: Any) -> None:
    """Chunks carry the log probabilities of their own tokens: the lists are joined."""
    if not isinstance(logprobs, dict):
        return
    merged = choice.get("logprobs")
    if not isinstance(merged, dict):
        merged = choice["logprobs"] = {}
    for name, value in logprobs.items():
        if isinstance(value, list):
            if not isinstance(merged.get(name), list):
                merged[name] = []
            merged[name].extend(value)
        elif value is not None or name not in merged:
            merged[name] = value


def _assemble_openai(endpoint: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    first = objects[0] if objects else {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for obj in objects:
        if obj.get("usage"):
            usage = obj["usage"]
        for piece in obj.get("choices") or ():
            index = piece.get("index", 0)
            if endpoint == "chat":
                choice = choices.setdefault(index, {
                    "index": index, "message": {"role": "assistant"}, "finish_reason": None})
                _merge(choice["message"], piece.get("delta") or {})
            else:
                choice = choices.setdefault(index, {"index": index, "text": "",
                                                    "finish_reason": None})
                choice["text"] += piece.get("text") or ""
            if piece.get("finish_reason"):
                choice["finish_reason"] = piece["finish_reason"]
            if piece.get("logprobs"):
                _merge_logprobs(choice, piece["logprobs"])
    body: dict[str, Any] = {
        "id": first.get("id", ""),
        "object": "chat.completion" if endpoint == "chat" else "text_completion",
        "created": first.get("created", 0), "model": first.get("model", "")}
    if "system_fingerprint" in first:
        body["system_fingerprint"] = first["system_fingerprint"]
    body["choices"] = [choices[index] for index in sorted(choices)]
    for choice in body["choices"]:
        message = choice.get("message")
        if message is not None:
            _drop_empty(message)
            # `content` as the stream gave it: "" (Ollama), null beside tool calls (OpenAI)
            message.setdefault("content", "")
    if usage is not None:
        body["usage"] = usage
    return body


def _assemble_ollama(endpoint: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    final = next((obj for obj in reversed(objects) if obj.get("done") is True),
                 objects[-1] if objects else {})
    body = {name: value for name, value in final.items()}
    if endpoint == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        for obj in objects:
            _merge(message, obj.get("message") or {})
        body["message"] = _drop_empty(message)
        if body["message"].get("content") is None:
            body["message"]["content"] = ""  # Ollama's messages always have text
    else:
        body["response"] = "".join(str(obj.get("response") or "") for obj in objects)
        thinking = "".join(str(obj.get(THINKING) or "") for obj in objects)
        body.pop(THINKING, None)
        if thinking:
            body[THINKING] = thinking
    logprobs = [item for obj in objects if isinstance(obj.get("logprobs"), list)
                for item in obj["logprobs"]]
    if logprobs:  # Ollama sends those of each chunk's tokens with the chunk
        body["logprobs"] = logprobs
    return body


def assemble(surface: str, endpoint: str, frames: Iterable[Frame]) -> dict[str, Any]:
    """The whole response the upstream would have sent without streaming."""
    objects = [obj for obj in (json.loads(frame.raw) for frame in frames
                               if not frame.verbatim and not frame.is_done)
               if isinstance(obj, dict)]
    if surface == OLLAMA:
        return _assemble_ollama(endpoint, objects)
    return _assemble_openai(endpoint, objects)


# --- body → stream -------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Text cut at word boundaries, each piece with the whitespace before it (as a
    model's tokens are: `" the"`)."""
    return _WORDS.findall(text)


def _pieces(texts: list[tuple[str, str]], logprobs: Any) -> list[tuple[str, str, Any]]:
    """(field, piece, its log probabilities) of the texts of an answer, in order: cut at
    the tokens of `logprobs` when they spell the texts out (each piece with its own entry,
    as Ollama streams them), else at word boundaries (any log probabilities with the
    first piece)."""
    tokens = logprobs if isinstance(logprobs, list) and logprobs else None
    pieces: list[tuple[str, str, Any]] = []
    fields = [(name, text) for name, text in texts if text]
    if tokens is not None and all(isinstance(entry, dict) and isinstance(entry.get("token"), str)
                                  and entry["token"] for entry in tokens):
        at = 0
        for entry in tokens:
            if not fields or not fields[0][1].startswith(entry["token"], at):
                break
            pieces.append((fields[0][0], entry["token"], [entry]))
            at += len(entry["token"])
            if at == len(fields[0][1]):
                fields, at = fields[1:], 0
        else:
            if not fields:
                return pieces
        fields = [(name, text) for name, text in texts if text]
    pieces = [(name, piece, None) for name, text in fields for piece in words(text)]
    if tokens is not None:
        name, piece, _ = pieces[0] if pieces else (texts[-1][0], "", None)
        pieces[:1] = [(name, piece, tokens)]
    return pieces


def _split_openai(endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream Ollama sends for `body` (v0.32.6+): the role on the first delta,
    reasoning as `{"content":"","reasoning":…}`, text pieces, tool calls whole in one
    delta, the finish on a `delta: {}` chunk, then the usage."""
    kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    base = {"id": body.get("id", ""), "object": kind, "created": body.get("created", 0),
            "model": body.get("model", "")}
    if "system_fingerprint" in body:
        base["system_fingerprint"] = body["system_fingerprint"]
    out: list[dict[str, Any]] = []
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)

        def chunk(part: dict[str, Any], finish: Any = None, logprobs: Any = None,
                  index: Any = index) -> dict[str, Any]:
            piece = {"index": index, **part, "finish_reason": finish}
            if logprobs:
                piece["logprobs"] = {"content": logprobs}
            return {**base, "choices": [piece]}

        logprobs = choice.get("logprobs")
        tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
        if endpoint != "chat":
            out.extend(chunk({"text": piece}, logprobs=entries)
                       for _, piece, entries in _pieces([("text", choice.get("text") or "")],
                                                        tokens))
            out.append(chunk({"text": ""}, choice.get("finish_reason") or "stop"))
            continue
        message = dict(choice.get("message") or {})
        role = message.pop("role", "assistant")
        texts = [(name, message.pop(name, "") or "") for name in REASONING_FIELDS]
        texts.append(("content", message.pop("content", "") or ""))
        deltas = [({"content": piece} if name == "content" else {"content": "", name: piece},
                   entries) for name, piece, entries in _pieces(texts, tokens)]
        calls = message.pop("tool_calls", None)
        if calls:
            deltas.append(({"content": "", "tool_calls": [
                {"index": position, **call} for position, call in enumerate(calls)]}, None))
        if not deltas:
            deltas.append(({"content": ""}, None))
        first, entries = deltas[0]
        deltas[0] = ({"role": role, **first}, entries)
        out.extend(chunk({"delta": delta}, logprobs=entries) for delta, entries in deltas)
        out.append(chunk({"delta": {}}, choice.get("finish_reason") or "stop"))
    if body.get("usage"):
        out.append({**base, "choices": [], "usage": body["usage"]})
    return out


def _split_ollama(endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream Ollama sends for `body`: thinking, then text, each piece with its own
    log probabilities; tool calls whole in one more line; the metrics on the last."""
    head = {name: body[name] for name in ("model", "created_at") if name in body}
    final = {name: value for name, value in body.items()
             if name not in ("message", "response", THINKING, "logprobs")}
    final["done"] = True
    out: list[dict[str, Any]] = []

    def line(part: dict[str, Any], logprobs: Any) -> dict[str, Any]:
        obj = {**head, **part, "done": False}
        return {**obj, "logprobs": logprobs} if logprobs else obj

    if endpoint == "chat":
        message = dict(body.get("message") or {})
        role = message.pop("role", "assistant")
        texts = [(name, message.pop(name, "") or "") for name in REASONING_FIELDS]
        texts.append(("content", message.pop("content", "") or ""))
        out.extend(line({"message": {"role": role, "content": piece}} if name == "content"
                        else {"message": {"role": role, "content": "", name: piece}}, entries)
                   for name, piece, entries in _pieces(texts, body.get("logprobs")))
        if message:  # tool calls, images: whole, in one more frame
            out.append(line({"message": {"role": role, "content": "", **message}}, None))
        final = {**final, "message": {"role": role, "content": ""}}
    else:
        texts = [(THINKING, body.get(THINKING) or ""), ("response", body.get("response") or "")]
        out.extend(line({"response": piece} if name == "response"
                        else {"response": "", THINKING: piece}, entries)
                   for name, piece, entries in _pieces(texts, body.get("logprobs")))
        final = {**final, "response": ""}
    out.append(final)
    return out


def split_body(surface: str, endpoint: str, body: dict[str, Any]) -> list[Frame]:
    """A stream of the answer in `body`, chunked at word boundaries, terminator included."""
    if surface == OLLAMA:
        return [Frame.of(obj) for obj in _split_ollama(endpoint, body)]
    return [*(Frame.of(obj) for obj in _split_openai(endpoint, body)), Frame(b"[DONE]")]


# --- entry → response ----------------------------------------------------------------------


def entry_frames(entry: Entry) -> list[Frame]:
    """The entry as a stream: its own frames, or frames cut from its body (kept)."""
    if entry.is_stream:
        return [entry.frame(index) for index in range(len(entry.frames))]
    if "frames" not in entry.derived:
        entry.derived["frames"] = split_body(entry.surface, entry.endpoint,
                                             json.loads(entry.body or b"{}"))
    return entry.derived["frames"]


def entry_body(entry: Entry) -> bytes:
    """The entry as a whole body: its own, or assembled from its frames (kept, and stored
    with the entry on disk: see `bridge.cache.entry`)."""
    if entry.body is not None:
        return entry.body
    if ASSEMBLED not in entry.derived:
        entry.derived[ASSEMBLED] = encode_json(
            assemble(entry.surface, entry.endpoint, entry_frames(entry))) + b"\n"
    return entry.derived[ASSEMBLED]


def prepare(entry: Entry) -> None:
    """Derive, once at store time, what serving the entry needs: its whole answer and
    replay notes (the disk tier stores them with the frames), its replay plan and body
    template (so that the memory tier counts them in its budget from the start)."""
    if entry.endpoint in EMBEDDING_ENDPOINTS:
        return
    if entry.is_stream:
        replay_notes(entry)
    stream_plan(entry)
    try:
        _template(entry)  # assembles the whole answer of a stream
    except ValueError:  # a frame that is not JSON: only a stream can be served from it
        pass


# --- replaying a stream without a JSON round trip per frame ---------------------------------

_CREATED_FIELD = re.compile(rb'"created":(-?\d+)(?=[,}])')
_CREATED_AT_FIELD = re.compile(rb'"created_at":"[^"\\]*"')
_DELIMITERS = (b",", b"}")


def replay_notes(entry: Entry) -> dict[str, Any] | None:
    """What replaying the entry's stream needs beyond its frames (JSON, kept in
    `derived[REPLAY]` and stored with the entry): the upstream's `id`, the `created`
    values in its frames, which frames carry usage; None when the frames cannot be
    joined (a NUL byte). Made on first use, by reading the frames once."""
    if REPLAY in entry.derived:
        return entry.derived[REPLAY]
    frames = entry_frames(entry)
    raws = [frame.raw for frame in frames]
    blob = SEPARATOR.join(raws)
    notes: dict[str, Any] | None = None
    if blob.count(SEPARATOR) == len(raws) - 1:
        notes = {"id": None, "created": [], "created_at": False, "usage_only": [],
                 "with_usage": []}
        if entry.surface == OPENAI:
            notes["id"] = next((frame.data["id"] for frame in frames
                                if not frame.verbatim and not frame.is_done
                                and isinstance(frame.data, dict)
                                and isinstance(frame.data.get("id"), str)), None)
            notes["created"] = sorted({int(value) for value in _CREATED_FIELD.findall(blob)})
            for index, frame in enumerate(frames):
                if frame.verbatim or b'"usage"' not in frame.raw:
                    continue
                obj = frame.data
                if isinstance(obj, dict) and "usage" in obj and "error" not in obj:
                    notes["usage_only" if obj.get("choices") == [] else "with_usage"].append(
                        index)
        else:
            notes["created_at"] = b'"created_at":"' in blob
    entry.derived[REPLAY] = notes
    return notes


@dataclass(frozen=True)
class StreamPlan:
    """An entry's frames prepared for replay: joined in one byte string, where every
    response's identity is put with a few C-level replacements, then cut apart again.

    The upstream's `"id":"..."` (the same in every frame of a stream) can only occur as
    a key and its value, since quotes inside strings are escaped; so can `"created":N`
    followed by `,` or `}`. `usage_only` are the frames dropped for a client that did not
    ask for usage, `with_usage` those that also carry choices (rewritten one by one).
    """

    blob: bytes
    verbatim: frozenset[int]
    id_field: bytes | None
    created: tuple[bytes, ...]
    created_at: bool
    usage_only: frozenset[int]
    with_usage: frozenset[int]
    # The usual case: every frame has the same `"id":…,"created":N` span (Ollama,
    # vLLM). Then the blob is kept cut at it, and one join puts the new span in.
    span: tuple[bytes, bytes] | None = None  # what lies between the id and the created
    pieces: list[bytes] | None = None

    @classmethod
    def of(cls, entry: Entry) -> "StreamPlan | None":
        notes = replay_notes(entry)
        if notes is None:
            return None
        if entry.is_stream:
            blob = entry.derived.get(JOINED) or SEPARATOR.join(entry.frames)
            verbatim = entry.verbatim
        else:
            frames = entry_frames(entry)
            blob = SEPARATOR.join(frame.raw for frame in frames)
            verbatim = frozenset(i for i, frame in enumerate(frames) if frame.verbatim)
        id_field = None if notes["id"] is None else b'"id":' + encode_json(notes["id"])
        created = tuple(b'"created":%d' % value for value in notes["created"])
        span = pieces = None
        if id_field is not None and len(created) == 1:
            start = blob.find(id_field)
            end = blob.find(created[0], start)
            after = end + len(created[0])
            if 0 <= start < end and blob[after:after + 1] in _DELIMITERS:
                whole = blob[start:after + 1]
                count = blob.count(whole)
                if count == blob.count(id_field) == blob.count(b'"created":'):
                    span = (blob[start + len(id_field):end], blob[after:after + 1])
                    pieces = blob.split(whole)
        entry.derived.pop(JOINED, None)  # the plan holds the frames' bytes from now on
        return cls(blob=b"" if pieces is not None else blob, verbatim=verbatim,
                   id_field=id_field, created=created,
                   created_at=notes["created_at"], usage_only=frozenset(notes["usage_only"]),
                   with_usage=frozenset(notes["with_usage"]), span=span, pieces=pieces)

    @property
    def nbytes(self) -> int:
        """What the plan holds in memory (for the memory tier's budget)."""
        pieces = self.pieces or ()
        return len(self.blob) + sum(map(len, pieces)) + 41 * len(pieces) + 256

    def frames(self, rewriter: "Rewriter") -> list[Frame]:
        """The frames as this response sends them."""
        blob = self.blob
        if self.span is not None and self.pieces is not None:
            middle, end = self.span
            blob = b'"id":"%s"%s"created":%d%s' % (rewriter.id.encode(), middle, rewriter.created,
                                                   end)
            blob = blob.join(self.pieces)
        elif self.id_field is not None:
            blob = blob.replace(self.id_field, b'"id":"%s"' % rewriter.id.encode())
        if self.created and self.span is None:
            new = b'"created":%d' % rewriter.created
            for old in self.created:
                for end in _DELIMITERS:
                    blob = blob.replace(old + end, new + end)
        if self.created_at:
            blob = _CREATED_AT_FIELD.sub(b'"created_at":' + encode_json(ollama_time()), blob)
        frames = list(map(Frame, blob.split(SEPARATOR)))
        for index in self.verbatim:
            frames[index].verbatim = True
        if rewriter.include_usage or not (self.usage_only or self.with_usage):
            return frames
        drop = set(self.usage_only)
        for index in self.with_usage:
            rewritten = rewriter.frame(frames[index])
            if rewritten is None:
                drop.add(index)
            else:
                frames[index] = rewritten
        for index in sorted(drop, reverse=True):
            del frames[index]
        return frames


def stream_plan(entry: Entry) -> StreamPlan | None:
    """The entry's replay plan, made on first use and kept with the entry (in memory)."""
    if "plan" not in entry.derived:
        entry.derived["plan"] = StreamPlan.of(entry)
    return entry.derived["plan"]


# Placeholders in a body template: filled per response by plain byte replacement, which
# is much cheaper than parsing and encoding the body for every memory hit. A template is
# JSON (stages outside the cache read it), so a placeholder is a string, which an answer's
# text could spell out: each holds a token drawn once per process and never sent (every
# template is stamped before it goes out), so no stored answer holds one.
_MARK = secrets.token_hex(16)
_PLACEHOLDERS = {name: f"\0{_MARK} {name}\0" for name in ("id", "created", "created_at")}
_ID = encode_json(_PLACEHOLDERS["id"])
_CREATED = encode_json(_PLACEHOLDERS["created"])
_CREATED_AT = encode_json(_PLACEHOLDERS["created_at"])


def body_template(surface: str, body: bytes) -> bytes | None:
    """`body` with placeholders where each response gets its own identity; None when
    `body` is not a JSON object."""
    data = json.loads(body)
    if not isinstance(data, dict):
        return None
    for name in ("created_at",) if surface == OLLAMA else ("id", "created"):
        if name in data:
            data[name] = _PLACEHOLDERS[name]
    return encode_json(data) + b"\n"


def _template(entry: Entry) -> bytes | None:
    """The entry's body template, made on first use and kept with the entry."""
    if "template" not in entry.derived:
        entry.derived["template"] = body_template(entry.surface, entry_body(entry))
    return entry.derived["template"]


def body_response(entry: Entry, rewriter: Rewriter, headers: dict[str, str]) -> Response:
    """The entry's body, as a template stamped with `rewriter`'s identity when the
    response leaves the pipeline (so that stages outside the cache see the same bytes for
    every replay, and may keep what they derive from them in the entry's `memo`)."""
    headers = {"content-type": BODY_CONTENT_TYPES[entry.surface], **headers}
    body = entry_body(entry)
    if entry.endpoint in EMBEDDING_ENDPOINTS:
        return Response(status=200, headers=headers, body=body, memo=entry.derived)
    template = _template(entry)
    if template is None:
        return Response(status=200, headers=headers, body=body, memo=entry.derived)
    return Response(status=200, headers=headers, body=template, memo=entry.derived,
                    stamp=lambda body: _stamp(body, rewriter))


def _stamp(template: bytes, rewriter: Rewriter) -> bytes:
    """The placeholders of a body template replaced by this response's identity."""
    body = template
    if _ID in body:
        body = body.replace(_ID, b'"%s"' % rewriter.id.encode())  # a prefix and hex digits
    if _CREATED in body:
        body = body.replace(_CREATED, str(rewriter.created).encode())
    if _CREATED_AT in body:
        body = body.replace(_CREATED_AT, encode_json(ollama_time()))
    return body


def stream_response(surface: str, frames: Iterable[Frame], rewriter: Rewriter,
                    headers: dict[str, str]) -> Response:
    """A stream of `frames` rewritten for one client; `outcome` is set as the end passes."""
    codec = stream_codec(surface)
    response = streaming.stream_response(200, headers, iter(frames), codec)
    response.map_frames(lambda source: _replayed(response, source, rewriter, surface))
    return response


def _replayed(response: Response, frames: Iterator[Frame], rewriter: Rewriter,
              surface: str) -> Iterator[Frame]:
    codec = stream_codec(surface)
    told = False  # the stream already carries an in-band error (the upstream client's)
    for frame in frames:
        if streaming.is_terminal(frame, codec):
            response.outcome = "complete"
        out = rewriter.frame(frame)
        if out is not None:
            told = streaming.is_error(out)
            yield out
    if response.outcome is None:  # a flight whose upstream stream broke off: say so, once
        response.outcome = "truncated"
        if not told:
            yield streaming.error_frame(surface, "upstream stream ended prematurely",
                                        code="upstream_stream_truncated")


def _replayed_plan(response: Response, frames: Iterator[Frame], count: int
                   ) -> Iterator[Frame]:
    """A stored stream of `count` frames (complete by definition: only those are stored,
    and its last frame is the terminator)."""
    yield from itertools.islice(frames, count - 1)
    response.outcome = "complete"
    yield from frames


def serve_entry(entry: Entry, shape: Shape, headers: dict[str, str],
                revisit: Callable[[], float | None] | None = None,
                key: str | None = None) -> Response:
    """A response for a stored entry, in the shape the client asked for. With `revisit`
    (the tier's check that the entry is still current), it is `replayable`; with the
    entry's `key`, its `source` names the entry (its key and creation time)."""
    rewriter = Rewriter(entry.surface, entry.endpoint, shape.include_usage)
    if shape.stream and entry.endpoint not in EMBEDDING_ENDPOINTS:
        plan = stream_plan(entry)
        if plan is None:
            return stream_response(entry.surface, entry_frames(entry), rewriter, headers)
        frames = plan.frames(rewriter)
        response = streaming.stream_response(200, headers, iter(frames),
                                             stream_codec(entry.surface))
        response.map_frames(lambda source: _replayed_plan(response, source, len(frames)))
        response.ready = True
    else:
        response = body_response(entry, rewriter, headers)
    if revisit is not None:
        response.replayable = Replayable(revisit, partial(restamper, rewriter))
    if key is not None:
        response.source = f"{key}@{entry.created!r}"
    return response


def restamper(rewriter: Rewriter, sent: bytes) -> Callable[[], bytes]:
    """What makes `sent` (an answer stamped with `rewriter`'s identity, as it went out,
    whatever stages changed on the way) again with a fresh identity for each response:
    the id (random hex: found only where it was put), `"created":N` (a key, since quotes
    inside strings are escaped) and Ollama's `created_at` values become the placeholders
    of a body template once, and each response stamps them as a body replay does."""
    template = sent.replace(b'"%s"' % rewriter.id.encode(), _ID)
    template = template.replace(b'"created":%d' % rewriter.created, b'"created":' + _CREATED)
    template = _CREATED_AT_FIELD.sub(lambda _: b'"created_at":' + _CREATED_AT, template)
    return lambda: _stamp(template, rewriter.fresh())
