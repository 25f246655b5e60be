"""Ollama's bytes on the wire: Go-style JSON, stream framing, and the deterministic
answers (content, reasoning, usage, embeddings) the stand-in puts in them.

Everything here is pure: no sockets, no state. The shapes follow
shared/reference/ollama-wire-format.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

SYSTEM_FINGERPRINT = "fp_ollama"
OLLAMA_VERSION = "0.5.1"
MODIFIED_AT = "2025-08-12T09:30:00.123456789Z"

# One stream frame: its payload, and whether it is the frame that ends the stream
# ([DONE] or the native done:true line), which a "cut" fault must never send.
Frame = tuple[bytes, bool]

# ---------------------------------------------------------------- Go's JSON

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
               "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def go_json(obj: object) -> bytes:
    """Encode like Go's json.Marshal: compact, raw UTF-8, HTML characters escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if _GO_ESCAPE_RE.search(text):  # only inside strings: JSON syntax has none of them
        text = _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group()], text)
    return text.encode("utf-8", "replace")


class GoJSONError(ValueError):
    """A request body Go's decoder would reject; str() is Go's error text."""


def _reject_constant(name: str) -> object:
    raise GoJSONError(f"invalid character {_go_quote(name[0])} looking for beginning of value")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def go_decode(raw: bytes) -> object:
    """Decode one JSON value like Go's json.Decoder.Decode (trailing data is ignored)."""
    text = raw.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise GoJSONError("EOF")
    try:
        return _DECODER.raw_decode(text, start)[0]
    except json.JSONDecodeError as exc:
        raise GoJSONError(_go_syntax_message(exc)) from None


def _go_syntax_message(exc: json.JSONDecodeError) -> str:
    doc, pos, msg = exc.doc, exc.pos, exc.msg
    if pos >= len(doc) or msg.startswith("Unterminated string"):
        return "unexpected EOF"
    if msg.startswith("Expecting property name"):
        where = "looking for beginning of object key string"
    elif msg.startswith("Expecting ':'"):
        where = "after object key"
    elif msg.startswith("Expecting ','"):
        inside_object = _innermost_container(doc, pos) == "{"
        where = "after object key:value pair" if inside_object else "after array element"
    elif msg.startswith("Invalid control character"):
        where = "in string literal"
    elif msg.startswith("Invalid \\escape"):
        where = "in string escape code"
    else:
        where = "looking for beginning of value"
    return f"invalid character {_go_quote(doc[pos])} {where}"


def _innermost_container(doc: str, pos: int) -> str:
    stack, in_string, escaped = [], False, False
    for ch in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_quote(ch: str) -> str:
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + json.dumps(ch, ensure_ascii=False)[1:-1] + "'"


def go_kind(value: object) -> str:
    """How Go's decoder names a JSON value in "cannot unmarshal X into ..." errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def rfc3339nano(ns: int | None = None) -> str:
    """UTC time as Go's time.RFC3339Nano prints it (trailing zeros of the fraction cut)."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


def sse(obj: object) -> bytes:
    return b"data: " + go_json(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def ndjson(obj: object) -> bytes:
    return go_json(obj) + b"\n"


# ---------------------------------------------------------------- the answers

_TOKEN_RE = re.compile(r"\s*\S+|\s+")


def split_tokens(text: str) -> list[str]:
    """Word tokens that keep their leading spaces, so they join back to `text` exactly."""
    return _TOKEN_RE.findall(text)


def count_prompt_tokens(texts: list[str]) -> int:
    return sum(len(split_tokens(text)) + 4 for text in texts)


def model_think_style(model: str) -> str:
    """How a model emits reasoning when the think mode is "auto"."""
    name = model.lower()
    if "deepseek-r1" in name:
        return "tags-no-open"
    if "qwq" in name:
        return "tags"
    if "qwen3" in name:
        return "field"
    return "none"


class ThinkingUnsupported(Exception):
    """Thinking was requested of a model that has none."""


def resolve_think(mode: str, model: str, requested: object = None) -> str:
    """The concrete think mode for one request.

    `requested` is the request's own wish (native `think`, /v1 `reasoning_effort`):
    None = unasked. It only matters in "auto"; with thinking off a thinking model's
    raw tags land in the content, as in real Ollama.
    """
    if mode != "auto":
        return mode
    style = model_think_style(model)
    if requested is None:
        return style
    if requested is False:
        return "tags" if style == "field" else style
    if style == "none":
        raise ThinkingUnsupported(model)
    return "field"


@dataclass(frozen=True)
class Piece:
    """One generated token: "content" or "reasoning" (the latter only in "field" mode)."""

    kind: str
    text: str


@dataclass
class Generation:
    pieces: list[Piece]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int

    def text(self, kind: str) -> str:
        return "".join(p.text for p in self.pieces if p.kind == kind)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


# The tags are cut at fixed places, one cut inside each tag, so that a filter in
# front of the stand-in meets `<think>` and `</think>` split across chunks.
_OPEN_TAG = ("<th", "ink>\n")
_CLOSE_TAG = ("\n</thi", "nk>\n\n")


def answer_text(prompt: str, n_messages: int) -> str:
    if n_messages > 1:
        return f"Echo ({n_messages} messages): {prompt}"
    return f"Echo: {prompt}"


def reasoning_text(prompt: str) -> str:
    topic = " ".join(prompt.split()[:5]) or "nothing"
    return f"Okay, the user asks about {topic}. Let me think.\nI will echo it back."


def generate(prompt: str, n_messages: int, mode: str, limit: int | None,
             prompt_tokens: int) -> Generation:
    """The deterministic answer to `prompt`, emitted the way think `mode` says.

    `limit` (max_tokens / num_predict) caps reasoning + answer tokens; tag fragments
    are free, so a small limit leaves a think block unclosed (finish "length").
    """
    reasoning = split_tokens(reasoning_text(prompt))
    answer = [(Piece("content", t), True) for t in split_tokens(answer_text(prompt, n_messages))]
    plan: list[tuple[Piece, bool]]  # (piece, counts against the limit)
    if mode == "field":
        plan = [(Piece("reasoning", t), True) for t in reasoning] + answer
    elif mode in ("tags", "tags-no-open"):
        plan = [(Piece("content", t), False) for t in _OPEN_TAG] if mode == "tags" else []
        plan += [(Piece("content", t), True) for t in reasoning]
        plan += [(Piece("content", t), False) for t in _CLOSE_TAG]
        plan += answer
    else:
        plan = answer
    pieces: list[Piece] = []
    used, finish = 0, "stop"
    for piece, counted in plan:
        if counted:
            if limit is not None and used >= limit:
                finish = "length"
                break
            used += 1
        pieces.append(piece)
    return Generation(pieces, finish, prompt_tokens, used)


def embedding(text: str, dims: int = 8) -> list[float]:
    """A unit vector derived from a hash of `text`."""
    digest = hashlib.sha256(text.encode("utf-8", "replace")).digest()
    raw = [b / 127.5 - 1.0 for b in digest[:dims]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def embedding_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def context_ids(*texts: str) -> list[int]:
    """Plausible token ids for /api/generate's `context`."""
    return [zlib.crc32(t.encode()) % 128256 for text in texts for t in split_tokens(text)]


# ---------------------------------------------------------------- models

# base name -> (family, parameter_size, quantization_level, size in bytes)
_KNOWN_MODELS = {
    "llama3.2": ("llama", "3.2B", "Q4_K_M", 2019393189),
    "qwen3": ("qwen3", "8.2B", "Q4_K_M", 5225388164),
    "qwq": ("qwen2", "32.8B", "Q4_K_M", 19851349856),
    "deepseek-r1": ("qwen2", "7.6B", "Q4_K_M", 4683075271),
    "deepseek-coder": ("llama", "1B", "Q4_0", 776080839),
    "qwen2.5": ("qwen2", "7.6B", "Q4_K_M", 4683087332),
    "all-minilm": ("bert", "23M", "F16", 45960996),
}


def canonical_name(name: str) -> str:
    name = name.strip().lower()
    return name if ":" in name else name + ":latest"


def model_info(name: str) -> dict:
    """The /api/tags entry of a model."""
    base = name.split(":", 1)[0].lower()
    digest = hashlib.sha256(name.encode()).hexdigest()
    family, params, quant, size = _KNOWN_MODELS.get(
        base, ("llama", "7B", "Q4_K_M", 4_000_000_000 + int(digest[:6], 16)))
    return {"name": name, "model": name, "modified_at": MODIFIED_AT, "size": size,
            "digest": digest,
            "details": {"parent_model": "", "format": "gguf", "family": family,
                        "families": [family], "parameter_size": params,
                        "quantization_level": quant}}


def is_embedding_model(name: str) -> bool:
    return model_info(name)["details"]["family"] == "bert"


def model_created(name: str) -> int:
    return 1746401864 + zlib.crc32(name.encode()) % 10_000_000


def completion_id(prefix: str) -> str:
    return f"{prefix}-{random.randrange(999)}"  # like Ollama: 0..998, ids repeat


# ---------------------------------------------------------------- OpenAI layer


def openai_chat_body(gen: Generation, model: str) -> dict:
    message = {"role": "assistant", "content": gen.text("content")}
    reasoning = gen.text("reasoning")
    if reasoning:
        message["reasoning"] = reasoning
    return {"id": completion_id("chatcmpl"), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "message": message, "finish_reason": gen.finish_reason}],
            "usage": gen.usage()}


def openai_chat_frames(gen: Generation, model: str, shape: str,
                       include_usage: bool) -> Iterator[Frame]:
    ident, created = completion_id("chatcmpl"), int(time.time())

    def chunk(delta: dict, finish: str | None = None, stamp: int = created) -> dict:
        return {"id": ident, "object": "chat.completion.chunk", "created": stamp,
                "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    if shape == "legacy":
        for piece in gen.pieces:
            delta = {"role": "assistant", "content": piece.text}
            if piece.kind == "reasoning":
                delta = {"role": "assistant", "content": "", "reasoning": piece.text}
            yield sse(chunk(delta, stamp=int(time.time()))), False
        last = chunk({"role": "assistant", "content": ""}, gen.finish_reason, int(time.time()))
        yield sse(last), False
        if include_usage:
            yield sse({**last, "choices": [], "usage": gen.usage()}), False
    else:
        first = True
        for piece in gen.pieces:
            delta = {"content": piece.text} if piece.kind == "content" else {
                "reasoning": piece.text}
            if first:
                delta = {"role": "assistant", "content": "", **delta}
                first = False
            yield sse(chunk(delta)), False
        if first:
            yield sse(chunk({"role": "assistant", "content": ""})), False
        yield sse(chunk({}, gen.finish_reason)), False
        if include_usage:
            yield sse({**chunk({}), "choices": [], "usage": gen.usage()}), False
    yield SSE_DONE, True


def openai_completion_body(gen: Generation, model: str) -> dict:
    return {"id": completion_id("cmpl"), "object": "text_completion",
            "created": int(time.time()), "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"text": gen.text("content"), "index": 0,
                         "finish_reason": gen.finish_reason}],
            "usage": gen.usage()}


def openai_completion_frames(gen: Generation, model: str,
                             include_usage: bool) -> Iterator[Frame]:
    ident, created = completion_id("cmpl"), int(time.time())

    def chunk(text: str, finish: str | None = None) -> dict:
        return {"id": ident, "object": "text_completion", "created": created,
                "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"text": text, "index": 0, "finish_reason": finish}]}

    for piece in gen.pieces:
        if piece.kind == "content":
            yield sse(chunk(piece.text)), False
    yield sse(chunk("", gen.finish_reason)), False
    if include_usage:
        yield sse({**chunk(""), "choices": [], "usage": gen.usage()}), False
    yield SSE_DONE, True


# ---------------------------------------------------------------- native API


def native_metrics(gen: Generation) -> dict:
    """Durations in ns (deterministic: a 20 ms token), counts; zeros omitted like Go."""
    metrics = {"load_duration": 1_334_875,
               "prompt_eval_count": gen.prompt_tokens,
               "prompt_eval_duration": gen.prompt_tokens * 1_000_000,
               "eval_count": gen.completion_tokens,
               "eval_duration": gen.completion_tokens * 20_000_000}
    total = {"total_duration": sum(v for k, v in metrics.items() if k.endswith("duration"))}
    return {k: v for k, v in {**total, **metrics}.items() if v}


def _native_message(content: str, thinking: str = "") -> dict:
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    return message


def native_chat_body(gen: Generation, model: str) -> dict:
    return {"model": model, "created_at": rfc3339nano(),
            "message": _native_message(gen.text("content"), gen.text("reasoning")),
            "done": True, "done_reason": gen.finish_reason, **native_metrics(gen)}


def native_chat_frames(gen: Generation, model: str) -> Iterator[Frame]:
    for piece in gen.pieces:
        message = (_native_message(piece.text) if piece.kind == "content"
                   else _native_message("", piece.text))
        yield ndjson({"model": model, "created_at": rfc3339nano(), "message": message,
                      "done": False}), False
    yield ndjson(native_chat_body(Generation([], gen.finish_reason, gen.prompt_tokens,
                                             gen.completion_tokens), model)), True


def _generate_part(model: str, response: str, thinking: str = "") -> dict:
    part = {"model": model, "created_at": rfc3339nano(), "response": response}
    if thinking:
        part["thinking"] = thinking
    return part


def native_generate_body(gen: Generation, model: str, context: list[int]) -> dict:
    return {**_generate_part(model, gen.text("content"), gen.text("reasoning")),
            "done": True, "done_reason": gen.finish_reason, "context": context,
            **native_metrics(gen)}


def native_generate_frames(gen: Generation, model: str,
                           context: list[int]) -> Iterator[Frame]:
    for piece in gen.pieces:
        part = (_generate_part(model, piece.text) if piece.kind == "content"
                else _generate_part(model, "", piece.text))
        yield ndjson({**part, "done": False}), False
    empty = Generation([], gen.finish_reason, gen.prompt_tokens, gen.completion_tokens)
    yield ndjson(native_generate_body(empty, model, context)), True
