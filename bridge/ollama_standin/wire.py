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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

SYSTEM_FINGERPRINT = "fp_ollama"
# /api/version per /v1 stream shape: the version whose shapes the stand-in then serves.
# 0.32.5 is the last with the legacy shape, and (since 0.12.4) already thinks by default.
OLLAMA_VERSIONS = {"new": "0.33.0", "nulls": "0.33.0", "legacy": "0.32.5"}
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
    except RecursionError:  # Go refuses past 10,000 levels; Python's own limit is lower
        raise GoJSONError("exceeded max depth") from None
    except ValueError:  # a number with more digits than Python converts: out of Go's range
        raise GoJSONError("json: cannot unmarshal number into Go value of type float64") \
            from None


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


class ThinkingUnsupported(Exception):
    """Thinking was requested of a model that has none."""


def resolve_think(mode: str, model: str, requested: object = None) -> str:
    """The concrete think mode for one request.

    `requested` is the request's wish, already validated: None (unasked), False (off),
    True or a level ("low"...). In "auto", as today's Ollama: a thinking-capable model
    reasons in a field unless thinking is off, when its raw output (tags included) lands
    in the content; a model without thinking never reasons and refuses to be asked to.
    Any other mode is forced, whatever the model and the request say.
    """
    if mode != "auto":
        return mode
    if "thinking" not in capabilities(model):
        if requested not in (None, False):
            raise ThinkingUnsupported(model)
        return "none"
    if requested is False and model_base(model) not in REASONS_ONLY_IN_FIELD:
        return "tags"
    return "field"


@dataclass(frozen=True)
class Piece:
    """One generated token: "content" or "reasoning" (the latter only in "field" mode)."""

    kind: str
    text: str


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool the request offered, as the model emits it (whole, once)."""

    id: str  # "call_" + 8 of [a-z0-9], fresh per call as Ollama's toolCallId()
    index: int
    name: str
    arguments: dict

    def native(self) -> dict:
        """`message.tool_calls[]` of /api/chat: the index inside `function`."""
        return {"id": self.id, "function": {"index": self.index, "name": self.name,
                                            "arguments": self.arguments}}

    def openai(self) -> dict:
        """`tool_calls[]` of /v1: `index` beside `id`, the arguments a JSON string."""
        return {"id": self.id, "index": self.index, "type": "function",
                "function": {"name": self.name,
                             "arguments": go_json(self.arguments).decode("utf-8")}}


@dataclass
class Generation:
    pieces: list[Piece]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    reasoning_key: str = "reasoning"  # the /v1 field of reasoning pieces
    tool_calls: list[ToolCall] = field(default_factory=list)  # emitted after the pieces
    top_logprobs: int | None = None  # None: no logprobs asked; else alternatives per token

    def text(self, kind: str) -> str:
        return "".join(p.text for p in self.pieces if p.kind == kind)

    def logprobs(self, start: int = 0, stop: int | None = None) -> list[dict] | None:
        """The logprobs entries of pieces[start:stop] (one per piece, reasoning included,
        as Ollama sends them), or None when none were asked for."""
        if self.top_logprobs is None:
            return None
        stop = len(self.pieces) if stop is None else stop
        return [token_logprob(self.pieces[i].text, i, self.top_logprobs)
                for i in range(start, stop)]

    def finish_openai(self, legacy: bool = False) -> str:
        """The /v1 finish_reason: `tool_calls` for a call that ended normally (v0.32.5
        and older: whatever the reason, once a call was sent)."""
        if self.tool_calls and (legacy or self.finish_reason == "stop"):
            return "tool_calls"
        return self.finish_reason

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
             prompt_tokens: int, tool: dict | None = None,
             top_logprobs: int | None = None) -> Generation:
    """The deterministic answer to `prompt`, emitted the way think `mode` says.

    `limit` (max_tokens / num_predict) caps reasoning + answer tokens; tag fragments
    are free, so a small limit leaves a think block unclosed (finish "length").
    With `tool` (an offered tool, Ollama's `{"type":"function","function":{...}}`), the
    answer is a call of it instead of text (see tool_call), after the reasoning; a call
    costs one token per 4 bytes of its arguments plus one, and one that does not fit
    the limit is not made (finish "length").
    `top_logprobs`: see Generation.
    """
    reasoning = split_tokens(reasoning_text(prompt))
    answer = [(Piece("content", t), True) for t in split_tokens(answer_text(prompt, n_messages))]
    call = tool_call(tool, prompt) if tool is not None else None
    if call is not None:
        answer = []
    plan: list[tuple[Piece, bool]]  # (piece, counts against the limit)
    if mode in ("field", "reasoning_content"):
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
    calls = []
    if call is not None and finish == "stop":
        cost = 1 + max(1, len(go_json(call.arguments)) // 4)  # ~4 bytes a token
        if limit is not None and used + cost > limit:
            finish = "length"
        else:
            calls, used = [call], used + cost
    key = "reasoning_content" if mode == "reasoning_content" else "reasoning"
    return Generation(pieces, finish, prompt_tokens, used, key, calls, top_logprobs)


_CALL_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def tool_call(tool: dict, prompt: str) -> ToolCall:
    """A call of `tool` answering `prompt`: one argument, the first required parameter
    (else the first one declared), valued from the prompt by its JSON-schema type (the
    first `enum` value if it has one; a string is the prompt itself). No parameters:
    `{}`."""
    function = tool.get("function") if isinstance(tool.get("function"), dict) else {}
    params = function.get("parameters") if isinstance(function.get("parameters"), dict) else {}
    properties = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    required = [name for name in params.get("required") or [] if name in properties]
    arguments: dict = {}
    if properties:
        name = required[0] if required else next(iter(properties))
        arguments[name] = _argument(properties[name], prompt)
    ident = "call_" + "".join(random.choice(_CALL_ID_ALPHABET) for _ in range(8))
    return ToolCall(ident, 0, str(function.get("name") or ""), arguments)


def _argument(schema: object, prompt: str) -> object:
    schema = schema if isinstance(schema, dict) else {}
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind in ("integer", "number"):
        return len(prompt.split())
    if kind == "boolean":
        return True
    if kind == "array":
        return [prompt]
    if kind == "object":
        return {}
    return prompt


# Alternatives offered in `top_logprobs` after the chosen token (which comes first).
_ALTERNATIVES = (" the", ",", ".", " a", " and", "\n", " to", " of", " is", " I", " it",
                 " in", " that", " you", " for", " on", " with", " as", " be", " at", " this")


def token_logprob(token: str, position: int, top: int) -> dict:
    """Ollama's logprobs entry of one generated token (`toAPILogprobs`): `token`,
    `logprob`, its UTF-8 `bytes`, and with `top` > 0 `top_logprobs`: the `top` likeliest
    tokens, the chosen one first. Values are derived from the token and its position;
    each has an odd fourth decimal, so Go and Python print it alike (never `-1` vs `-1.0`)."""
    chosen = -round(0.0101 + zlib.crc32(f"{position}:{token}".encode()) % 10000 * 0.0002, 4)
    entry: dict = _token_entry(token, chosen)
    if top > 0:
        others = [t for t in _ALTERNATIVES if t != token][:top - 1]
        entry["top_logprobs"] = [_token_entry(token, chosen)] + [
            _token_entry(t, round(chosen - 0.5 * (rank + 1), 4))
            for rank, t in enumerate(others)]
    return entry


def _token_entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


EMBEDDING_DIMS = 384  # all-minilm's `embedding_length`
# Words that say little about what a question asks: left out, so that two questions
# share a direction only by the words that carry their meaning.
_STOP_WORDS = frozenset(
    "a an and are as at be by can could do does for from how i in is it its me my of on "
    "or please s should so tell that the this to was what whats which who why will with "
    "would you your".split())
_WORD = re.compile(r"\w+")


def embedding(text: str, dims: int = EMBEDDING_DIMS) -> list[float]:
    """A hashed bag of words, as a unit vector: each word (lower case, but for a few
    stop words) adds +1 or -1 to one of `dims` coordinates chosen by its hash, so texts
    sharing words are close (cosine = shared words over the geometric mean of their
    counts, but for rare collisions) and texts sharing none are near orthogonal. A text
    without such words is the first axis."""
    raw = [0.0] * dims
    for word in _WORD.findall(text.lower()):
        if word in _STOP_WORDS:
            continue
        digest = hashlib.blake2b(word.encode("utf-8", "replace"), digest_size=8).digest()
        number = int.from_bytes(digest, "big")
        raw[number % dims] += 1.0 if number >> 63 else -1.0
    norm = math.sqrt(sum(x * x for x in raw))
    if not norm:
        raw[0], norm = 1.0, 1.0
    return [round(x / norm, 6) for x in raw]


def embedding_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def context_ids(*texts: str) -> list[int]:
    """Plausible token ids for /api/generate's `context`."""
    return [zlib.crc32(t.encode()) % 128256 for text in texts for t in split_tokens(text)]


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelCard:
    """What the stand-in knows of a model family: /api/tags details, /api/show data."""

    family: str
    parameter_size: str
    quantization: str
    size: int
    capabilities: tuple[str, ...]  # in Ollama's order: completion, tools, insert, thinking
    context_length: int = 131072
    embedding_length: int = 3584
    block_count: int = 28


_KNOWN_MODELS = {
    "llama3.2": ModelCard("llama", "3.2B", "Q4_K_M", 2019393189, ("completion", "tools"),
                          embedding_length=3072),
    "qwen3": ModelCard("qwen3", "8.2B", "Q4_K_M", 5225388164,
                       ("completion", "tools", "thinking"), 40960, 4096, 36),
    "qwen3-coder": ModelCard("qwen3moe", "30.5B", "Q4_K_M", 18556688734,
                             ("completion", "tools"), 262144, 2048, 48),
    "qwq": ModelCard("qwen2", "32.8B", "Q4_K_M", 19851349856,
                     ("completion", "tools", "thinking"), 40960, 5120, 64),
    "deepseek-r1": ModelCard("qwen2", "7.6B", "Q4_K_M", 4683075271,
                             ("completion", "tools", "thinking")),
    "deepseek-coder": ModelCard("llama", "1B", "Q4_0", 776080839, ("completion", "insert"),
                                16384, 2048, 24),
    "qwen2.5": ModelCard("qwen2", "7.6B", "Q4_K_M", 4683087332, ("completion", "tools"),
                         32768),
    "gpt-oss": ModelCard("gptoss", "20.9B", "MXFP4", 13780173734,
                         ("completion", "tools", "thinking"), 131072, 2880, 24),
    "all-minilm": ModelCard("bert", "23M", "F16", 45960996, ("embedding",), 512, 384, 6),
}
# Unknown names (a "strict" catalogue's extra models, any name in "any") are plain chat.
_PLAIN = ModelCard("llama", "7B", "Q4_K_M", 4_000_000_000, ("completion",), 4096, 4096, 32)
# Models whose reasoning comes in a field even with thinking off (gpt-oss cannot stop).
REASONS_ONLY_IN_FIELD = frozenset({"gpt-oss"})
_FILE_TYPES = {"F16": 1, "Q4_0": 2, "Q4_K_M": 15, "MXFP4": 38}
_SIZE_UNITS = {"M": 10**6, "B": 10**9}


def canonical_name(name: str) -> str:
    name = name.strip().lower()
    return name if ":" in name else name + ":latest"


def full_name(name: str) -> str:
    """The name as Ollama's errors spell it: "registry.ollama.ai/library/qwen3:latest"."""
    parts = canonical_name(name).split("/")
    return "/".join(["registry.ollama.ai", "library"][:max(0, 3 - len(parts))] + parts)


def model_base(name: str) -> str:
    """The family part of a model name: "deepseek-r1" of "DeepSeek-R1:7b"."""
    return name.strip().lower().split(":", 1)[0].rsplit("/", 1)[-1]


def _card(name: str) -> ModelCard:
    return _KNOWN_MODELS.get(model_base(name), _PLAIN)


def capabilities(name: str) -> list[str]:
    """The model's /api/show capabilities; `thinking` only where it can reason
    (the qwen3 instruct-2507 tags cannot)."""
    tag = canonical_name(name).split(":", 1)[1]
    caps = list(_card(name).capabilities)
    if model_base(name) == "qwen3" and "instruct" in tag:
        caps.remove("thinking")
    return caps


def model_details(name: str) -> dict:
    """`details` as /api/show and /api/ps give them."""
    card = _card(name)
    return {"parent_model": "", "format": "gguf", "family": card.family,
            "families": [card.family], "parameter_size": card.parameter_size,
            "quantization_level": card.quantization}


def model_info(name: str) -> dict:
    """The /api/tags entry of a model: `details` with the GGUF's context and embedding
    lengths, and the capabilities (since v0.30.0)."""
    card = _card(name)
    digest = hashlib.sha256(name.encode()).hexdigest()
    size = card.size if card is not _PLAIN else card.size + int(digest[:6], 16)
    return {"name": name, "model": name, "modified_at": MODIFIED_AT, "size": size,
            "digest": digest,
            "details": {**model_details(name), "context_length": card.context_length,
                        "embedding_length": card.embedding_length},
            "capabilities": capabilities(name)}


def loaded_context_length(name: str) -> int:
    """/api/ps `context_length`: the runner's, Ollama's default 4096 or the model's less."""
    return min(4096, _card(name).context_length)


def is_known_family(name: str) -> bool:
    return model_base(name) in _KNOWN_MODELS


PULL_NOT_FOUND = "pull model manifest: file does not exist"


def pull_progress(name: str) -> Iterator[dict]:
    """/api/pull's progress (`PullModel`): the manifest, each layer's download at 0, half
    and all of it (`completed` left out at 0, as Go's omitempty does), the checks, then
    `success`."""
    yield {"status": "pulling manifest"}
    card = _card(name)
    layers = (("model", card.size), ("template", 1_429), ("license", 11_343),
              ("params", 120), ("config", 487))
    for kind, total in layers:
        digest = "sha256:" + hashlib.sha256(f"{canonical_name(name)}:{kind}".encode()).hexdigest()
        for completed in (0, total // 2, total):
            progress = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total}
            yield {**progress, "completed": completed} if completed else progress
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    yield {"status": "success"}


def gguf_info(name: str) -> dict:
    """/api/show's `model_info`: GGUF metadata, keys sorted as Go marshals a map."""
    card = _card(name)
    arch = card.family
    count = round(float(card.parameter_size[:-1]) * _SIZE_UNITS[card.parameter_size[-1]])
    info = {"general.architecture": arch, "general.basename": model_base(name),
            "general.file_type": _FILE_TYPES[card.quantization],
            "general.parameter_count": count, "general.quantization_version": 2,
            "general.size_label": card.parameter_size, "general.type": "model",
            f"{arch}.attention.head_count": card.embedding_length // 128,
            f"{arch}.block_count": card.block_count,
            f"{arch}.context_length": card.context_length,
            f"{arch}.embedding_length": card.embedding_length,
            "tokenizer.ggml.model": "bert" if arch == "bert" else "gpt2"}
    return dict(sorted(info.items()))


def is_embedding_model(name: str) -> bool:
    return "embedding" in capabilities(name)


def model_created(name: str) -> int:
    return 1746401864 + zlib.crc32(name.encode()) % 10_000_000


def completion_id(prefix: str) -> str:
    return f"{prefix}-{random.randrange(999)}"  # like Ollama: 0..998, ids repeat


# ---------------------------------------------------------------- OpenAI layer


def _fail_in_band(frames: Iterator[Frame], after: int | None, error: bytes) -> Iterator[Frame]:
    """`frames`, or with `after` set, its first `after` frames and then `error` as the
    last one (an upstream failure after the stream started, reported in band)."""
    for sent, frame in enumerate(frames):
        if after is not None and (sent >= after or frame[1]):
            yield error, True
            return
        yield frame


def openai_chat_body(gen: Generation, model: str) -> dict:
    message = {"role": "assistant", "content": gen.text("content")}
    reasoning = gen.text("reasoning")
    if reasoning:
        message[gen.reasoning_key] = reasoning
    if gen.tool_calls:
        message["tool_calls"] = [call.openai() for call in gen.tool_calls]
    choice = {"index": 0, "message": message, "finish_reason": gen.finish_openai()}
    logprobs = gen.logprobs()
    if logprobs:
        choice["logprobs"] = {"content": logprobs}
    return {"id": completion_id("chatcmpl"), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice], "usage": gen.usage()}


def openai_chat_frames(gen: Generation, model: str, shape: str, include_usage: bool,
                       fail_after: int | None = None) -> Iterator[Frame]:
    """The /v1 chat stream in `shape`; with `fail_after`, it fails after that many frames
    as Ollama's middleware reports it: one chunk with `"model":""` and empty content,
    then a clean end with neither finish chunk nor [DONE] (the error text is lost).
    Each token's chunk carries its logprobs entry (`choices[0].logprobs.content`) when
    asked for; tool calls come whole, in one delta after the text."""
    ident, created = completion_id("chatcmpl"), int(time.time())
    legacy = shape == "legacy"

    def chunk(delta: dict, finish: str | None = None, name: str = model,
              logprobs: list[dict] | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return {"id": ident, "object": "chat.completion.chunk",
                "created": int(time.time()) if legacy else created, "model": name,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [choice]}

    frames = (_legacy_chat_chunks if legacy else _chat_chunks)(gen, chunk, shape == "nulls")
    if include_usage:
        frames = _with_usage(frames, gen)
    error = {"role": "assistant", "content": ""} if legacy else {"content": ""}
    yield from _fail_in_band(_sse_frames(frames), fail_after, sse(chunk(error, name="")))


def _sse_frames(chunks: Iterator[dict]) -> Iterator[Frame]:
    for obj in chunks:
        yield sse(obj), False
    yield SSE_DONE, True


def _with_usage(chunks: Iterator[dict], gen: Generation) -> Iterator[dict]:
    """The chunks, then the usage chunk: a copy of the last one, `choices: []`."""
    last: dict = {}
    for last in chunks:  # noqa: B007 - the last one is kept
        yield last
    yield {**last, "choices": [], "usage": gen.usage()}


def _legacy_chat_chunks(gen: Generation, chunk: Callable[..., dict],
                        nulls: bool) -> Iterator[dict]:
    """v0.32.5 and older: role on every delta, the finish on a last delta of its own."""
    for index, piece in enumerate(gen.pieces):
        delta = {"role": "assistant", "content": piece.text}
        if piece.kind == "reasoning":
            delta = {"role": "assistant", "content": "", gen.reasoning_key: piece.text}
        yield chunk(delta, logprobs=gen.logprobs(index, index + 1))
    if gen.tool_calls:
        yield chunk({"role": "assistant", "content": "",
                     "tool_calls": [call.openai() for call in gen.tool_calls]})
    yield chunk({"role": "assistant", "content": ""}, gen.finish_openai(legacy=True))


def _chat_chunks(gen: Generation, chunk: Callable[..., dict], nulls: bool) -> Iterator[dict]:
    """v0.32.6+: role on the first delta only, `{"content":"","reasoning":"…"}` for
    reasoning, the finish on a `delta: {}` chunk. With `nulls`, a role-only first delta
    holds the reasoning field and `tool_calls` as null, and every later delta has both
    `content` and the reasoning field, null where it has nothing (as vLLM sends them)."""
    key = gen.reasoning_key
    if nulls:
        yield chunk({"role": "assistant", "content": "", key: None, "tool_calls": None})
    first = not nulls
    for index, piece in enumerate(gen.pieces):
        if nulls:
            reasoning = piece.kind == "reasoning"
            delta = {"content": None if reasoning else piece.text,
                     key: piece.text if reasoning else None}
        elif piece.kind == "content":
            delta = {"content": piece.text}
        else:
            delta = {"content": "", key: piece.text}
        if first:
            delta = {"role": "assistant", **delta, "content": delta.get("content", "")}
            first = False
        yield chunk(delta, logprobs=gen.logprobs(index, index + 1))
    if gen.tool_calls:
        calls = [call.openai() for call in gen.tool_calls]
        delta = ({"content": None, key: None, "tool_calls": calls} if nulls
                 else {"content": "", "tool_calls": calls})
        if first:
            delta = {"role": "assistant", **delta}
            first = False
        yield chunk(delta)
    if first:
        yield chunk({"role": "assistant", "content": ""})
    yield chunk({}, gen.finish_openai())


def openai_completion_body(gen: Generation, model: str) -> dict:
    """Ollama's `ToCompletion`: no logprobs, whatever the request asked."""
    return {"id": completion_id("cmpl"), "object": "text_completion",
            "created": int(time.time()), "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"text": gen.text("content"), "index": 0,
                         "finish_reason": gen.finish_reason}],
            "usage": gen.usage()}


ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def openai_completion_frames(gen: Generation, model: str, include_usage: bool,
                             fail_after: int | None = None) -> Iterator[Frame]:
    """The /v1/completions stream: `created` read afresh for every chunk, `choices`
    before `model` (Ollama's CompletionChunk), a `"text":""` chunk for each reasoning
    piece (the reasoning itself is dropped), no logprobs (`ToCompleteChunk` drops them),
    and with `include_usage` a zero `usage` on every chunk before the real one."""
    ident = completion_id("cmpl")

    def chunk(text: str, finish: str | None = None, name: str = model) -> dict:
        obj = {"id": ident, "object": "text_completion", "created": int(time.time()),
               "choices": [{"text": text, "index": 0, "finish_reason": finish}],
               "model": name, "system_fingerprint": SYSTEM_FINGERPRINT}
        return {**obj, "usage": ZERO_USAGE} if include_usage else obj

    def chunks() -> Iterator[dict]:
        for piece in gen.pieces:
            yield chunk(piece.text if piece.kind == "content" else "")
        last = chunk("", gen.finish_reason)
        yield last
        if include_usage:
            yield {**last, "choices": [], "usage": gen.usage()}

    yield from _fail_in_band(_sse_frames(chunks()), fail_after, sse(chunk("", name="")))


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


def _native_message(content: str, thinking: str = "",
                    tool_calls: list[ToolCall] | None = None) -> dict:
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = [call.native() for call in tool_calls]
    return message


def _with_logprobs(obj: dict, logprobs: list[dict] | None) -> dict:
    return {**obj, "logprobs": logprobs} if logprobs else obj


def native_chat_body(gen: Generation, model: str) -> dict:
    """`api.ChatResponse`: `logprobs` between `done_reason` and the metrics."""
    message = _native_message(gen.text("content"), gen.text("reasoning"), gen.tool_calls)
    head = {"model": model, "created_at": rfc3339nano(), "message": message,
            "done": True, "done_reason": gen.finish_reason}
    return {**_with_logprobs(head, gen.logprobs()), **native_metrics(gen)}


def native_error_line(message: str) -> bytes:
    """A native stream's failure after it started: a last `{"error":…}` line, status 200."""
    return ndjson({"error": message})


def native_chat_frames(gen: Generation, model: str, fail_after: int | None = None,
                       error: str = "") -> Iterator[Frame]:
    def part(message: dict, logprobs: list[dict] | None = None) -> Frame:
        obj = {"model": model, "created_at": rfc3339nano(), "message": message,
               "done": False}
        return ndjson(_with_logprobs(obj, logprobs)), False

    def frames() -> Iterator[Frame]:
        for index, piece in enumerate(gen.pieces):
            message = (_native_message(piece.text) if piece.kind == "content"
                       else _native_message("", piece.text))
            yield part(message, gen.logprobs(index, index + 1))
        if gen.tool_calls:
            yield part(_native_message("", tool_calls=gen.tool_calls))
        yield ndjson(native_chat_body(_trailer(gen), model)), True

    yield from _fail_in_band(frames(), fail_after, native_error_line(error))


def _trailer(gen: Generation) -> Generation:
    """The metrics-only last frame of a native stream: no text, calls or logprobs."""
    return Generation([], gen.finish_reason, gen.prompt_tokens, gen.completion_tokens)


def _generate_part(model: str, response: str, thinking: str = "") -> dict:
    part = {"model": model, "created_at": rfc3339nano(), "response": response}
    if thinking:
        part["thinking"] = thinking
    return part


def native_generate_body(gen: Generation, model: str, context: list[int]) -> dict:
    """`api.GenerateResponse`: `logprobs` last, after the metrics."""
    body = {**_generate_part(model, gen.text("content"), gen.text("reasoning")),
            "done": True, "done_reason": gen.finish_reason, "context": context,
            **native_metrics(gen)}
    return _with_logprobs(body, gen.logprobs())


def native_generate_frames(gen: Generation, model: str, context: list[int],
                           fail_after: int | None = None, error: str = "") -> Iterator[Frame]:
    def frames() -> Iterator[Frame]:
        for index, piece in enumerate(gen.pieces):
            part = (_generate_part(model, piece.text) if piece.kind == "content"
                    else _generate_part(model, "", piece.text))
            yield ndjson(_with_logprobs({**part, "done": False},
                                        gen.logprobs(index, index + 1))), False
        yield ndjson(native_generate_body(_trailer(gen), model, context)), True

    yield from _fail_in_band(frames(), fail_after, native_error_line(error))
