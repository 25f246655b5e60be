"""OpenAI's API (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
`/v1/models`) as adapters of the translation layer: each of the pipeline's OpenAI wires
as a client-side `Surface` (Ollama's `openai.FromChatRequest`, `ToChatCompletion`,
`ToStreamChunks` and their middleware), and `OpenAIKind`, an upstream that speaks
OpenAI's API only (DeepSeek, OpenAI, vLLM, llama.cpp, LM Studio, DashScope…).

Where Ollama's middleware and the translation differ, the translation says so:

- A message's content parts stay one native message (its text joined, its images in
  `images`), where Ollama makes a message of each part: the same conversation for an
  upstream that is not an Ollama, and it comes back as it went.
- No defaults are added (Ollama sets `temperature` and `top_p` to 1.0): the upstream's
  own apply, and Claude refuses both at once.
- `developer` messages are `system` messages; `max_completion_tokens` is `max_tokens`.
- Answers carry reasoning in `reasoning` and `reasoning_content` both, as the bridge
  delivers it on `/v1` (`bridge.core.reasoning.KEPT_REASONING_FIELDS`).

Refused (`Unsupported`, a 400 naming the field): `n` > 1, `logit_bias`, audio output,
the deprecated `functions`, `web_search_options`, non-function tools, audio and file
content parts; on `/v1/completions` `suffix`, `echo`, `best_of` > 1 and more than one
prompt; on `/v1/embeddings` token arrays. Dropped as harmless: `user`, `metadata`,
`store`, `service_tier`, `parallel_tool_calls`, `prediction`, `prompt_cache_key`,
`safety_identifier`. `tool_choice` "none" sends no tools, a named function only that
one; "required" cannot be said natively and sends them all (as `/v1/responses` does).

To an OpenAI upstream (`OpenAIKind.outbound`), per native option: `temperature`,
`top_p`, `seed`, `stop`, `frequency_penalty`, `presence_penalty` as they are,
`num_predict` as `max_tokens` (what every OpenAI-compatible server takes); runtime
options (`num_ctx`, `num_gpu`, `num_thread`, `use_mmap`, `keep_alive`…) dropped;
sampler options that only narrow or penalise within the model's own distribution
(`top_k`, `min_p`, `typical_p`, `tfs_z`, `repeat_penalty`, `repeat_last_n`,
`penalize_newline`, and `mirostat_tau`/`mirostat_eta`, which act only with mirostat)
dropped, the upstream's sampler standing in; `mirostat` switched on (another sampling
algorithm, not a tuning) refused. Refused too: images outside user messages, or in a
format other than JPEG, PNG, GIF or WebP; a tool result that answers no tool call; a
`format` that is neither "json" nor a schema. `think` levels become `reasoning_effort`
("max" is "xhigh"); `think: true` leaves the effort to the model and `think: false` is
dropped (the think stage hides what a model reasons anyway, and OpenAI refuses
`reasoning_effort` for the models that cannot reason). A JSON schema `format` is a
`json_schema` response format named "response", not `strict` (OpenAI's strict mode
takes only some schemas).
Tool calls without an id get `call_` and a digest of their place and content, not a
random one: the same history is the same request, for upstream prompt caches.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import quote

from bridge.core.errors import BadRequest, error_text
from bridge.core.exchange import Frame, encode_json
from bridge.core.reasoning import OPENAI_REASONING_FIELDS
from bridge.core.streaming import error_frame, event_data, ollama_time
from bridge.surfaces import adapter
from bridge.surfaces.adapter import CHAT, EMBED, MODELS, SHOW, Call, Outbound, Unsupported
from bridge.surfaces.media import media_type
from bridge.surfaces.responses import (
    arguments_json,
    error_body,
    expect,
    image_data,
    optional,
    think_of,
)

NAME = "openai"
DONE = b"[DONE]"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"

# OpenAI's request fields that map one to one onto native options
SAMPLING = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
# native options -> an OpenAI upstream's request fields (`num_predict` apart)
OUTBOUND_OPTIONS = ("temperature", "top_p", "seed", "stop", *SAMPLING[2:])
# native think levels -> reasoning_effort (OpenAI's scale goes past "high")
EFFORTS_OUT = {"low": "low", "medium": "medium", "high": "high", "max": "xhigh"}
FINISH_REASONS = frozenset({"stop", "length", "content_filter"})
ENCODINGS = ("float", "base64")
_FRACTION = re.compile(r"\.\d+")
_REASONING_FIRST = tuple(reversed(OPENAI_REASONING_FIELDS))  # the field `_thinking` takes


# ------------------------------------------------------------------ the client's request


def _positive(payload: dict, name: str) -> int | None:
    value = optional(payload, name, int, "an integer")
    if value is not None and value < 0:
        raise BadRequest(f"'{name}' must not be negative", param=name)
    return value


def _refuse(payload: dict) -> None:
    """`Unsupported` for what the native chat cannot say (the module's list)."""
    if (_positive(payload, "n") or 1) > 1:
        raise Unsupported("n", "one choice per request only")
    if payload.get("logit_bias"):
        raise Unsupported("logit_bias", "token biases cannot be expressed")
    modalities = payload.get("modalities")
    if payload.get("audio") is not None or (isinstance(modalities, list)
                                            and "audio" in modalities):
        raise Unsupported("audio", "audio output cannot be expressed")
    for name in ("functions", "function_call", "web_search_options"):
        if payload.get(name) is not None:
            raise Unsupported(name, "cannot be expressed (use tools)" if name.startswith(
                "function") else "built-in web search cannot be expressed")


def _options(payload: dict) -> dict[str, Any]:
    """The native options of a request's sampling fields (`FromChatRequest`)."""
    options: dict[str, Any] = {}
    for name in SAMPLING:
        value = optional(payload, name, (int, float), "a number")
        if value is not None:
            options[name] = value
    seed = optional(payload, "seed", int, "an integer")
    if seed is not None:
        options["seed"] = seed
    limit = _positive(payload, "max_completion_tokens")
    limit = _positive(payload, "max_tokens") if limit is None else limit
    if limit is not None:
        options["num_predict"] = limit
    stop = payload.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif stop is not None:
        if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
            raise BadRequest("'stop' must be a string or an array of strings", param="stop")
        options["stop"] = stop
    return options


def _stream(payload: dict) -> tuple[bool, bool]:
    """(stream, include_usage) of a request."""
    stream = optional(payload, "stream", bool, "a boolean") is True
    options = optional(payload, "stream_options", dict, "an object") or {}
    return stream, options.get("include_usage") is True


def _model(payload: dict) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required (a string)", param="model")
    return model


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    """(text, base64 images) of a message's content: a string or content parts."""
    if content is None or isinstance(content, str):
        return content or "", []
    expect(content, list, f"{where}.content", "a string or an array of content parts")
    text, images = "", []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = expect(part, dict, at, "an object").get("type")
        if kind in ("text", "refusal"):
            text += expect(part.get(kind), str, f"{at}.{kind}", "a string")
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(image_data(url, f"{at}.image_url"))
        elif kind in ("input_audio", "file"):
            raise Unsupported(at, f"{kind} content cannot be expressed")
        else:
            raise BadRequest(f"invalid message format: unknown content type {kind!r}",
                             param=f"{at}.type")
    return text, images


def parse_arguments(text: Any) -> dict[str, Any]:
    """A tool call's JSON arguments as the native object ({} for none or not an object)."""
    if isinstance(text, dict):
        return text
    try:
        parsed = json.loads(text) if isinstance(text, str) and text.strip() else {}
    except ValueError:
        parsed = {}
    return parsed if isinstance(parsed, dict) else {}


def _native_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI tool calls as native ones (`FromCompletionToolCall`): arguments parsed."""
    native = []
    for index, call in enumerate(expect(calls, list, where, "an array")):
        at = f"{where}[{index}]"
        function = expect(expect(call, dict, at, "an object").get("function"), dict,
                          f"{at}.function", "an object")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(expect(arguments, str, f"{at}.function.arguments",
                                       "a JSON string"))
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise BadRequest("invalid tool call arguments", param=f"{at}.function.arguments")
        entry: dict[str, Any] = {"function": {"name": function.get("name") or "",
                                              "arguments": parsed}}
        if isinstance(call.get("id"), str) and call["id"]:
            entry = {"id": call["id"], **entry}
        native.append(entry)
    return native


def _native_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("[] is too short - 'messages'", param="messages")
    native = []
    names: dict[str, str] = {}  # tool call id -> its function's name (`nameFromToolCallID`)
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = expect(message, dict, where, "an object").get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"{where}: a message needs a 'role'", param=f"{where}.role")
        role = "system" if role == "developer" else role
        if role == "function":
            raise Unsupported(where, "function messages cannot be expressed (use tools)")
        calls = message.get("tool_calls")
        if message.get("content") is None and not calls and role != "assistant":
            raise BadRequest(f"{where}: invalid message content type: null",
                             param=f"{where}.content")
        text, images = _content(message.get("content"), where)
        entry: dict[str, Any] = {"role": role, "content": text}
        if images:
            entry["images"] = images
        thinking = next((message[name] for name in OPENAI_REASONING_FIELDS
                         if isinstance(message.get(name), str) and message[name]), "")
        if thinking:
            entry["thinking"] = thinking
        if calls:
            entry["tool_calls"] = _native_calls(calls, f"{where}.tool_calls")
            names.update((call["id"], call["function"]["name"])
                         for call in entry["tool_calls"] if "id" in call)
        if role == "tool":
            ident = message.get("tool_call_id")
            name = message.get("name") or names.get(ident if isinstance(ident, str) else "", "")
            if name:
                entry["tool_name"] = name
            if isinstance(ident, str) and ident:
                entry["tool_call_id"] = ident
        native.append(entry)
    return native


def _tools(payload: dict) -> list[dict[str, Any]]:
    tools = optional(payload, "tools", list, "an array of tools") or []
    for index, tool in enumerate(tools):
        at = f"tools[{index}]"
        if expect(tool, dict, at, "an object").get("type", "function") != "function":
            raise Unsupported(f"{at}.type", f"{tool.get('type')!r} tools cannot be expressed")
        function = expect(tool.get("function"), dict, f"{at}.function", "an object")
        expect(function.get("name"), str, f"{at}.function.name", "a string")
    choice = payload.get("tool_choice")
    if choice == "none":
        return []
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        named = [tool for tool in tools if tool["function"]["name"] == name]
        if not named:
            raise BadRequest(f"tool_choice names the function {name!r}, which is not among "
                             "'tools'", param="tool_choice")
        return named
    return tools


def _format(payload: dict) -> Any:
    """The native `format` of `response_format`: "json", a schema, or None."""
    fmt = optional(payload, "response_format", dict, "an object")
    kind = str((fmt or {}).get("type", "")).strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = optional(fmt, "json_schema", dict, "an object") or {}
        return schema.get("schema")
    if kind not in ("", "text"):
        raise BadRequest(f"invalid response_format type: {fmt.get('type')!r}",
                         param="response_format.type")
    return None


def chat_request(payload: dict) -> dict[str, Any]:
    """The native chat request of a `/v1/chat/completions` request (`FromChatRequest`)."""
    _refuse(payload)
    native: dict[str, Any] = {"model": _model(payload),
                              "messages": _native_messages(payload.get("messages")),
                              "stream": _stream(payload)[0]}
    reasoning = optional(payload, "reasoning", dict, "an object")
    said = {"options": _options(payload) or None, "tools": _tools(payload) or None,
            "format": _format(payload),
            "think": think_of(reasoning.get("effort"), "reasoning.effort")
            if reasoning is not None
            else think_of(payload.get("reasoning_effort"), "reasoning_effort")}
    native.update((name, value) for name, value in said.items() if value is not None)
    if optional(payload, "logprobs", bool, "a boolean"):
        native["logprobs"] = True
        top = _positive(payload, "top_logprobs")
        if top:
            native["top_logprobs"] = top
    return native


# ------------------------------------------------------------------ the answer


def _usage(native: dict[str, Any]) -> dict[str, int]:
    """`ToUsage`: the native counts as OpenAI's usage."""
    prompt, generated = native.get("prompt_eval_count") or 0, native.get("eval_count") or 0
    return {"prompt_tokens": prompt, "completion_tokens": generated,
            "total_tokens": prompt + generated}


def finish_reason(done_reason: Any, tool_calls: bool) -> str:
    """OpenAI's `finish_reason` of a native `done_reason` (`FinishChunk`)."""
    reason = done_reason if isinstance(done_reason, str) and done_reason in FINISH_REASONS \
        else "stop"  # (a list in a broken upstream's frame would raise)
    return "tool_calls" if reason == "stop" and tool_calls else reason


def _message(native: dict[str, Any]) -> dict[str, Any]:
    message = native.get("message")
    return message if isinstance(message, dict) else {}


def _calls(message: dict[str, Any], call: Call) -> list[dict[str, Any]]:
    """Native tool calls as OpenAI's (`ToToolCalls`); one without an id gets one."""
    calls = message.get("tool_calls")
    out = []
    for position, native in enumerate(calls if isinstance(calls, list) else ()):
        if not isinstance(native, dict):
            continue
        function = native.get("function") if isinstance(native.get("function"), dict) else {}
        ident = native.get("id")
        if not isinstance(ident, str) or not ident:
            ident = adapter.new_id("call")
            call.ids.append(ident)
        index = function.get("index")
        out.append({"id": ident, "index": index if isinstance(index, int) else position,
                    "type": "function", "function": {"name": function.get("name", ""),
                                                     "arguments": arguments_json(native)}})
    return out


def _reasoning(thinking: Any) -> dict[str, str]:
    return dict.fromkeys(OPENAI_REASONING_FIELDS, thinking) if thinking else {}


def _logprobs(native: dict[str, Any]) -> dict[str, Any]:
    entries = native.get("logprobs")
    return {"logprobs": {"content": entries}} if isinstance(entries, list) and entries else {}


@dataclass
class OpenAICall(Call):
    """A request of one of OpenAI's wires: its answer's id and time, and what shapes it."""

    include_usage: bool = False
    encoding: str = "float"  # embeddings: "float" or "base64"
    created: int = field(default_factory=lambda: int(time.time()))

    def ident(self, prefix: str) -> str:
        return f"{prefix}-{self.ids[0]}"


class _OpenAI(adapter.Surface):
    """What OpenAI's wires share: their error shape."""

    name = NAME

    def error(self, status: int, message: str, param: str | None = None,
              code: str | None = None) -> dict[str, Any]:
        return error_body(status, message, param, code)


class _Generating(_OpenAI):
    """A wire answered by a native chat (chat and completions): its request converted
    by `convert`, its answer an object around one choice, its stream by `chunks`."""

    prefix = ""  # of its answers' ids
    object = ""

    @staticmethod
    def convert(payload: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> OpenAICall:
        native = self.convert(payload)
        return OpenAICall(native=native, model=native["model"], stream=native["stream"],
                          ids=[secrets.token_hex(12)], include_usage=_stream(payload)[1])

    def answer(self, native: dict[str, Any], call: Call, choice: dict[str, Any]
               ) -> dict[str, Any]:
        assert isinstance(call, OpenAICall)
        return {"id": call.ident(self.prefix), "object": self.object,
                "created": call.created, "model": native.get("model") or call.model,
                "choices": [choice], "usage": _usage(native)}

    def translator(self, call: Call) -> adapter.Translator:
        assert isinstance(call, OpenAICall)
        return self.chunks(call)

    def chunks(self, call: OpenAICall) -> adapter.Translator:
        raise NotImplementedError


class OpenAIChat(_Generating):
    """`POST /v1/chat/completions`."""

    routes = (("POST", CHAT_PATH),)
    prefix, object = "chatcmpl", "chat.completion"
    fields = MappingProxyType({"format": "response_format", "think": "reasoning_effort",
                               "options.num_predict": "max_tokens"})
    convert = staticmethod(chat_request)

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        message = _message(native)
        calls = _calls(message, call)
        said: dict[str, Any] = {"role": "assistant", "content": message.get("content") or "",
                                **_reasoning(message.get("thinking"))}
        if calls:
            said["tool_calls"] = calls
        return self.answer(native, call, {
            "index": 0, "message": said,
            "finish_reason": finish_reason(native.get("done_reason"), bool(calls)),
            **_logprobs(native)})

    def chunks(self, call: OpenAICall) -> adapter.Translator:
        return ChatChunks(call)


class _Chunks(adapter.Translator):
    """What the streams of chat and completions share: each chunk's frame, the usage
    chunk and `[DONE]` at the end, the in-band error."""

    object = ""

    def __init__(self, call: OpenAICall, prefix: str):
        self.call = call
        self.id = call.ident(prefix)

    def chunk(self, native: dict[str, Any], choices: list[dict[str, Any]]) -> Frame:
        return Frame.of({"id": self.id, "object": self.object, "created": self.call.created,
                         "model": native.get("model") or self.call.model,
                         "choices": choices})

    def end(self, native: dict[str, Any], last: Frame) -> list[Frame]:
        """The finish chunk `last`, the usage chunk when asked for, and `[DONE]`."""
        frames = [last]
        if self.call.include_usage:
            frames.append(Frame.of({**last.data, "choices": [], "usage": _usage(native)}))
        frames.append(Frame(DONE))
        return frames

    def failed(self, status: int, message: str) -> list[Frame]:
        return [error_frame(NAME, message)]


class ChatChunks(_Chunks):
    """`chat.completion.chunk`s of a native chat stream (the middleware's `ChatWriter`):
    `role` on the first delta only, a piece with reasoning and content or tool calls as
    two chunks, the finish on a chunk of its own with `delta: {}`, no chunk for the
    native stream's empty trailer."""

    object = "chat.completion.chunk"

    def __init__(self, call: OpenAICall):
        super().__init__(call, "chatcmpl")
        self.started = False
        self.tool_calls = False
        self._text: tuple[Any, bytes] | None = None  # (model, its text chunks' first bytes)

    def frame(self, native: dict[str, Any]) -> list[Frame]:
        if self.started:
            text = self.text_delta(native)
            if text is not None:
                return [text]
        message = _message(native)
        thinking, content = message.get("thinking") or "", message.get("content") or ""
        calls = _calls(message, self.call)
        logprobs = _logprobs(native)
        out = []
        if not (self.started and native.get("done") is True
                and not (thinking or content or calls or logprobs)):
            role = {} if self.started else {"role": "assistant"}
            self.started = True
            if thinking and (content or calls):
                out.append(self._delta(native, {**role, **_reasoning(thinking)}, logprobs))
                role, thinking, logprobs = {}, "", {}
            delta: dict[str, Any] = {**role, "content": content, **_reasoning(thinking)}
            if calls:
                delta["tool_calls"] = calls
                self.tool_calls = True
            out.append(self._delta(native, delta, logprobs))
        if native.get("done") is True:
            reason = finish_reason(native.get("done_reason"), self.tool_calls)
            out.extend(self.end(native, self._delta(native, {}, {}, reason)))
        return out

    def text_delta(self, native: dict[str, Any]) -> Frame | None:
        """The chunk of a frame that only adds text, after the first (most of them), made
        as `frame` makes it, from a template of its bytes; None for any other frame."""
        message = native.get("message")
        if native.get("done") is True or type(message) is not dict \
                or message.get("thinking") or message.get("tool_calls") \
                or native.get("logprobs"):
            return None
        content = message.get("content")
        if type(content) is not str or not content:
            return None
        model = native.get("model") or self.call.model
        if self._text is None or self._text[0] != model:
            head = {"id": self.id, "object": self.object, "created": self.call.created,
                    "model": model}
            self._text = (model, encode_json(head)[:-1]
                          + b',"choices":[{"index":0,"delta":{"content":')
        delta = {"content": content}
        return Frame(b'%s%s},"finish_reason":null}]}' % (
            self._text[1], encode_basestring(content).encode()),
            {"id": self.id, "object": self.object, "created": self.call.created,
             "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    def _delta(self, native: dict[str, Any], delta: dict[str, Any], logprobs: dict[str, Any],
               reason: str | None = None) -> Frame:
        return self.chunk(native, [{"index": 0, "delta": delta, "finish_reason": reason,
                                    **logprobs}])


# ------------------------------------------------------------------ /v1/completions


def _legacy_logprobs(entries: Any, offset: int) -> dict[str, Any] | None:
    """Native logprobs as `/v1/completions`' (tokens, token_logprobs, top_logprobs,
    text_offset), the first token at `offset` in the answer's text."""
    if not isinstance(entries, list) or not entries:
        return None
    tokens, offsets = [], []
    for entry in entries:
        offsets.append(offset)
        tokens.append(entry.get("token", ""))
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [entry.get("logprob") for entry in entries],
            "top_logprobs": [{top.get("token", ""): top.get("logprob")
                              for top in entry.get("top_logprobs") or []}
                             for entry in entries],
            "text_offset": offsets}


def completion_request(payload: dict) -> dict[str, Any]:
    """The native chat request of a `/v1/completions` request: its prompt one user
    message (`FromCompleteRequest`, then as a chat)."""
    _refuse(payload)
    if payload.get("suffix"):
        raise Unsupported("suffix", "fill-in-the-middle cannot be expressed in a chat")
    if payload.get("echo") is True:
        raise Unsupported("echo", "the prompt cannot be echoed from a chat")
    if (_positive(payload, "best_of") or 1) > 1:
        raise Unsupported("best_of", "one completion per request only")
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, list) or (prompt is not None and not isinstance(prompt, str)):
        raise Unsupported("prompt", "one prompt of text per request only")
    native: dict[str, Any] = {"model": _model(payload),
                              "messages": [{"role": "user", "content": prompt or ""}],
                              "stream": _stream(payload)[0]}
    options = _options(payload)
    if options:
        native["options"] = options
    top = _positive(payload, "logprobs")
    if top:
        native.update(logprobs=True, top_logprobs=top)
    return native


class OpenAICompletions(_Generating):
    """`POST /v1/completions`, answered by a chat: reasoning is left out, as Ollama's
    `ToCompletion` leaves it."""

    routes = (("POST", COMPLETIONS_PATH),)
    prefix, object = "cmpl", "text_completion"
    fields = MappingProxyType({"options.num_predict": "max_tokens"})
    convert = staticmethod(completion_request)

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        return self.answer(native, call, {
            "text": _message(native).get("content") or "", "index": 0,
            "finish_reason": finish_reason(native.get("done_reason"), False),
            "logprobs": _legacy_logprobs(native.get("logprobs"), 0)})

    def chunks(self, call: OpenAICall) -> adapter.Translator:
        return CompletionChunks(call)


class CompletionChunks(_Chunks):
    """`text_completion` chunks, one per native frame (`ToCompleteChunk`: a frame of
    reasoning only is a chunk of no text), the last with its `finish_reason`."""

    object = "text_completion"

    def __init__(self, call: OpenAICall):
        super().__init__(call, "cmpl")
        self.offset = 0

    def frame(self, native: dict[str, Any]) -> list[Frame]:
        text = _message(native).get("content") or ""
        logprobs = _legacy_logprobs(native.get("logprobs"), self.offset) if text else None
        self.offset += len(text)
        done = native.get("done") is True
        reason = finish_reason(native.get("done_reason"), False) if done else None
        chunk = self.chunk(native, [{"text": text, "index": 0, "finish_reason": reason,
                                     "logprobs": logprobs}])
        return self.end(native, chunk) if done else [chunk]


# ------------------------------------------------------------------ embeddings, models


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class OpenAIEmbeddings(_OpenAI):
    """`POST /v1/embeddings` (`EmbeddingsMiddleware`, `ToEmbeddingList`)."""

    routes = (("POST", EMBEDDINGS_PATH),)
    family = EMBED

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> OpenAICall:
        model = _model(payload)
        encoding = optional(payload, "encoding_format", str, "a string") or "float"
        if encoding.lower() not in ENCODINGS:
            raise BadRequest(f"Invalid value for 'encoding_format' = {encoding}. Supported "
                             "values: ['float', 'base64'].", param="encoding_format")
        given = payload.get("input")
        given = [""] if given == "" else given
        if not given or not isinstance(given, (str, list)):
            raise BadRequest("invalid input", param="input")
        if isinstance(given, list) and not all(isinstance(item, str) for item in given):
            raise Unsupported("input", "token arrays cannot be expressed, only text")
        native: dict[str, Any] = {"model": model, "input": given}
        dimensions = _positive(payload, "dimensions")
        if dimensions:
            native["dimensions"] = dimensions
        return OpenAICall(native=native, model=model, stream=False,
                          encoding=encoding.lower())

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        assert isinstance(call, OpenAICall)
        vectors = native.get("embeddings") or []
        encode = _base64 if call.encoding == "base64" else list
        prompt = native.get("prompt_eval_count") or 0
        return {"object": "list", "data": [{"object": "embedding", "embedding": encode(vector),
                                            "index": index}
                                           for index, vector in enumerate(vectors)],
                "model": call.model, "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


def _unix(moment: Any) -> int:
    """Seconds since the epoch of an RFC 3339 time (0 for none)."""
    try:
        return int(datetime.fromisoformat(_FRACTION.sub("", moment)).timestamp())
    except (TypeError, ValueError):
        return 0


def _owner(name: str) -> str:
    """The namespace of a model name, as Ollama's `model.ParseName` reads it."""
    parts = name.partition(":")[0].split("/")
    return parts[-2] if len(parts) > 1 else "library"


class OpenAIModels(_OpenAI):
    """`GET /v1/models` (`ToListCompletion`)."""

    routes = (("GET", MODELS_PATH),)
    family = MODELS

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> Call:
        return Call(native={}, model="", stream=False)

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        data = []
        for entry in native.get("models") or []:
            if not isinstance(entry, dict):
                continue
            name = entry.get("model") or entry.get("name") or ""
            data.append({"id": name, "object": "model", "created": _unix(
                entry.get("modified_at")), "owned_by": _owner(name)})
        return {"object": "list", "data": data}


class OpenAIModel(_OpenAI):
    """`GET /v1/models/{model}` (`ToModel`): one model's description as OpenAI's model
    object. The model comes from the path: `request` takes `{"model": NAME}`."""

    routes = (("GET", MODELS_PATH + "/{model}"),)
    family = SHOW

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> Call:
        model = str(payload.get("model") or "")
        return Call(native={"model": model}, model=model, stream=False)

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        return {"id": call.model, "object": "model", "created": _unix(native.get("modified_at")),
                "owned_by": _owner(call.model)}


# ------------------------------------------------------------------ an OpenAI upstream


def _parts(text: str, images: list[Any], where: str) -> list[dict[str, Any]]:
    """A user message's text and images as content parts (the images as data URLs)."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for index, image in enumerate(images):
        kind = media_type(image) if isinstance(image, str) else None
        if kind is None:
            raise Unsupported(f"{where}.images[{index}]",
                              "OpenAI takes JPEG, PNG, GIF or WebP images (base64)")
        parts.append({"type": "image_url", "image_url": {"url": f"data:{kind};base64,{image}"}})
    return parts


def _call_id(call: dict[str, Any], where: str) -> str:
    """A native tool call's id, or one made of its place and content (the same history
    gives the same ids: an upstream's prompt cache still matches)."""
    ident = call.get("id")
    if isinstance(ident, str) and ident:
        return ident
    digest = hashlib.sha256(f"{where}:{arguments_json(call)}:{_name(call)}".encode())
    return f"call_{digest.hexdigest()[:24]}"


def _name(call: dict[str, Any]) -> str:
    function = call.get("function")
    return str(function.get("name", "")) if isinstance(function, dict) else ""


def _outbound_messages(messages: Any) -> list[dict[str, Any]]:
    """Native messages as OpenAI's: images as data-URL parts, tool calls with ids and
    JSON arguments, tool results with the id of the call they answer, and the reasoning
    of the assistant messages after the last user message as `reasoning_content`
    (DeepSeek wants it back within a tool loop, and refuses older turns')."""
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be an array", param="messages")
    last_user = max((index for index, message in enumerate(messages)
                     if isinstance(message, dict) and message.get("role") == "user"),
                    default=-1)
    out = []
    waiting: list[tuple[str, str]] = []  # (id, name) of the calls not answered yet
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = expect(message, dict, where, "an object").get("role")
        content = message.get("content") or ""
        images = message.get("images") or []
        if images and role != "user":
            raise Unsupported(f"{where}.images", f"OpenAI takes images in user messages only, "
                              f"not in {role} messages")
        if role == "tool":
            out.append({"role": "tool", "tool_call_id": _answered(message, waiting, where),
                        "content": content})
            continue
        entry: dict[str, Any] = {"role": role, "content": _parts(content, images, where) if images
                                 else content}
        calls = message.get("tool_calls")
        if role == "assistant":
            waiting = []
            if calls:
                entry["tool_calls"] = [
                    {"id": _call_id(call, f"{where}.tool_calls[{position}]"),
                     "type": "function", "function": {"name": _name(call),
                                                      "arguments": arguments_json(call)}}
                    for position, call in enumerate(calls) if isinstance(call, dict)]
                waiting = [(call["id"], call["function"]["name"])
                           for call in entry["tool_calls"]]
            if message.get("thinking") and index > last_user:
                entry["reasoning_content"] = message["thinking"]
        out.append(entry)
    return out


def _answered(message: dict[str, Any], waiting: list[tuple[str, str]], where: str) -> str:
    """The id of the call a tool result answers (`adapter.answered_call`), else its own."""
    found = adapter.answered_call(message, waiting)
    if found is not None:
        return found
    ident = message.get("tool_call_id")
    if isinstance(ident, str) and ident:
        return ident
    raise Unsupported(f"{where}.tool_call_id", "a tool result that answers no tool call")


def _outbound_options(native: dict[str, Any]) -> dict[str, Any]:
    options = native.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object", param="options")
    if options.get("mirostat"):
        raise Unsupported("options.mirostat", "mirostat sampling cannot be expressed")
    body = {name: options[name] for name in OUTBOUND_OPTIONS if options.get(name) is not None}
    limit = options.get("num_predict")
    if isinstance(limit, int) and limit >= 0:
        body["max_tokens"] = limit
    return body


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    raise Unsupported("format", f"{fmt!r} is neither \"json\" nor a JSON schema")


def chat_outbound(native: dict[str, Any]) -> dict[str, Any]:
    """The `/v1/chat/completions` request of a native chat request."""
    body: dict[str, Any] = {"model": native.get("model"),
                            "messages": _outbound_messages(native.get("messages")),
                            **_outbound_options(native)}
    if native.get("tools"):
        body["tools"] = [{"type": "function", **tool} for tool in native["tools"]
                         if isinstance(tool, dict)]
    response_format = _response_format(native.get("format"))
    if response_format is not None:
        body["response_format"] = response_format
    think = native.get("think")
    if isinstance(think, str) and think:
        if think not in EFFORTS_OUT:
            raise Unsupported("think", f"{think!r} is not a reasoning level")
        body["reasoning_effort"] = EFFORTS_OUT[think]
    if native.get("logprobs"):
        body["logprobs"] = True
        if native.get("top_logprobs"):
            body["top_logprobs"] = native["top_logprobs"]
    if native.get("stream", True) is not False:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _done_reason(reason: Any) -> str:
    return "length" if reason == "length" else "stop"


def _thinking(holder: dict[str, Any]) -> str:
    """The reasoning an OpenAI message or delta carries (DeepSeek's field, or vLLM's and
    Ollama's), once."""
    for name in _REASONING_FIRST:
        value = holder.get(name)
        if value and isinstance(value, str):
            return value
    return ""


def _text(holder: dict[str, Any]) -> str:
    content = holder.get("content")
    return content if isinstance(content, str) else ""


def _entries(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The logprobs entries of a choice (the native form's, as OpenAI gives them)."""
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    return entries if isinstance(entries, list) and entries else None


def _counts(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    return {"prompt_eval_count": usage.get("prompt_tokens") or 0,
            "eval_count": usage.get("completion_tokens") or 0}


def _native_call(call: dict[str, Any], position: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    native: dict[str, Any] = {"function": {"index": position, "name": function.get("name", ""),
                                           "arguments": parse_arguments(
                                               function.get("arguments"))}}
    if isinstance(call.get("id"), str) and call["id"]:
        native = {"id": call["id"], **native}
    return native


def _frame(model: str, message: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"model": model, "created_at": ollama_time(),
            "message": {"role": "assistant", **message}, **more}


class ChatReader(adapter.Reader):
    """An OpenAI chat stream as native frames: each content or reasoning delta a frame,
    a tool call's pieces gathered by index and given whole when its choice finishes,
    and the one `done: true` frame once the finish and the usage are known (at the
    usage chunk after the finish, or at `[DONE]`)."""

    def __init__(self, native: dict[str, Any]):
        self.model = native.get("model") or ""
        self.calls: dict[int, dict[str, str]] = {}
        self.sent_calls = False
        self.reason: str | None = None
        self.counts: dict[str, int] = {}
        self.done = False

    def frame(self, frame: Frame) -> list[dict[str, Any]]:
        if self.done:
            return []
        if frame.raw == DONE:
            return self._finish()
        name, data = event_data(frame) if frame.verbatim else (None, frame.data)
        if not isinstance(data, dict):
            return []  # a comment (keep-alive)
        if name == "error" or data.get("error") is not None:
            self.done = True
            return [{"error": error_message(data) or "the upstream's stream failed"}]
        choices = data.get("choices")
        if type(choices) is list and len(choices) == 1 and not data.get("usage"):
            choice = choices[0]  # most chunks: one choice, no usage
            return self._choice(choice) if isinstance(choice, dict) \
                and choice.get("index", 0) == 0 else []
        out = []
        for choice in data.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out.extend(self._choice(choice))
        if data.get("usage"):
            self.counts = _counts(data["usage"])
            if self.reason is not None:
                out.extend(self._finish())
        return out

    def _choice(self, choice: dict[str, Any]) -> list[dict[str, Any]]:
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        content, thinking = _text(delta), _thinking(delta)
        logprobs = _entries(choice) if choice.get("logprobs") else None
        out = []
        if content or thinking or logprobs:
            message = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            native = {"model": self.model, "created_at": ollama_time(), "message": message,
                      "done": False}
            if logprobs:
                native["logprobs"] = logprobs
            out.append(native)
        if delta.get("tool_calls"):
            for position, piece in enumerate(delta["tool_calls"]):
                self._gather(piece, position)
        if choice.get("finish_reason"):
            self.reason = choice["finish_reason"]
            out.extend(self._whole_calls())
        return out

    def _gather(self, piece: Any, position: int) -> None:
        if not isinstance(piece, dict):
            return
        index = piece.get("index")
        index = index if isinstance(index, int) else position
        call = self.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        function = piece.get("function") if isinstance(piece.get("function"), dict) else {}
        if piece.get("id") and not call["id"]:
            call["id"] = piece["id"]
        if function.get("name") and not call["name"]:
            call["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            call["arguments"] += function["arguments"]

    def _whole_calls(self) -> list[dict[str, Any]]:
        if not self.calls or self.sent_calls:
            return []
        self.sent_calls = True
        calls = [_native_call({"id": call["id"], "function": {
            "name": call["name"], "arguments": call["arguments"]}}, index)
            for index, call in sorted(self.calls.items())]
        return [_frame(self.model, {"content": "", "tool_calls": calls}, done=False)]

    def _finish(self) -> list[dict[str, Any]]:
        self.done = True
        return [*self._whole_calls(), _frame(self.model, {"content": ""}, done=True,
                                             done_reason=_done_reason(self.reason),
                                             **self.counts)]

    def end(self) -> list[dict[str, Any]]:
        """A stream that finished its choice but sent no `[DONE]` is whole all the same."""
        return self._finish() if self.reason is not None and not self.done else []


def _chat_whole(body: Any, native: dict[str, Any]) -> dict[str, Any]:
    choices = body.get("choices") if isinstance(body, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(
        choices[0], dict) else {}
    said = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    message: dict[str, Any] = {"content": _text(said)}
    if _thinking(said):
        message["thinking"] = _thinking(said)
    calls = [_native_call(call, position) for position, call in
             enumerate(said.get("tool_calls") or ()) if isinstance(call, dict)]
    if calls:
        message["tool_calls"] = calls
    logprobs = _entries(choice)
    return _frame(native.get("model") or body.get("model") or "", message, done=True,
                  done_reason=_done_reason(choice.get("finish_reason")),
                  **({"logprobs": logprobs} if logprobs else {}), **_counts(body.get("usage")))


def _vector(embedding: Any) -> list[float]:
    if isinstance(embedding, str):  # base64 little-endian float32s
        try:
            raw = base64.b64decode(embedding)
        except ValueError:  # not base64 (binascii.Error)
            return []
        return list(struct.unpack(f"<{len(raw) // 4}f", raw)) if len(raw) % 4 == 0 else []
    return embedding if isinstance(embedding, list) else []


def _details() -> dict[str, Any]:
    return {"parent_model": "", "format": "", "family": "", "families": None,
            "parameter_size": "", "quantization_level": ""}


def _tag(entry: dict[str, Any]) -> dict[str, Any]:
    name = str(entry.get("id", ""))
    return {"name": name, "model": name, "modified_at": ollama_time(entry.get("created") or None),
            "size": 0, "digest": "", "details": _details()}


class OpenAIKind(adapter.Kind):
    """An upstream that speaks OpenAI's API only: each of the pipeline's OpenAI wires
    goes to it as it is; the rest is translated to chat completions, embeddings and
    its model list."""

    name = NAME
    speaks = frozenset({(NAME, "chat"), (NAME, "completions"), (NAME, "embeddings"),
                        (NAME, "models")})
    probe = MODELS_PATH

    def outbound(self, family: str, native: dict[str, Any]) -> Outbound:
        if family == CHAT:
            body = chat_outbound(native)
            return Outbound("POST", CHAT_PATH, body)
        if family == EMBED:
            body = {"model": native.get("model"), "input": native.get("input")}
            if native.get("dimensions"):
                body["dimensions"] = native["dimensions"]
            return Outbound("POST", EMBEDDINGS_PATH, body)
        if family == MODELS:
            return Outbound("GET", MODELS_PATH)
        if family == SHOW:
            model = str(native.get("model") or native.get("name") or "")
            return Outbound("GET", f"{MODELS_PATH}/{quote(model, safe=':/@')}")
        raise Unsupported(family, "not a request of OpenAI's API")

    def whole(self, family: str, body: Any, native: dict[str, Any]) -> dict[str, Any]:
        body = body if isinstance(body, dict) else {}
        if family == CHAT:
            return _chat_whole(body, native)
        if family == EMBED:
            data = sorted((item for item in body.get("data") or () if isinstance(item, dict)),
                          key=lambda item: item.get("index", 0))
            return {"model": native.get("model") or body.get("model"),
                    "embeddings": [_vector(item.get("embedding")) for item in data],
                    "prompt_eval_count": (body.get("usage") or {}).get("prompt_tokens") or 0}
        if family == MODELS:
            return {"models": [_tag(entry) for entry in body.get("data") or ()
                               if isinstance(entry, dict)]}
        return {"modelfile": "", "parameters": "", "template": "", "details": _details(),
                "model_info": {}, "capabilities": ["completion"],
                "modified_at": ollama_time(body.get("created") or None)}

    def reader(self, family: str, native: dict[str, Any]) -> adapter.Reader:
        if family != CHAT:
            raise Unsupported(family, "only chat answers stream")
        return ChatReader(native)

    def error(self, body: Any) -> str:
        return error_message(body)


def error_message(body: Any) -> str:
    """The message of an OpenAI-compatible server's error body: OpenAI's shape, Ollama's,
    vLLM's (`{"object": "error", "message"}`), FastAPI's (`{"detail"}`), or plain text."""
    if isinstance(body, str):
        return body
    message = error_text(body)
    if not message and isinstance(body, dict):
        message = next((body[name] for name in ("message", "detail")
                        if isinstance(body.get(name), str)), "")
    return message
