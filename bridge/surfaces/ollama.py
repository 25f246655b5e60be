"""Ollama's native API on both sides of the translation: its wires as client surfaces
(`/api/chat`, `/api/embed`, `/api/tags`, `/api/show` are the canonical form itself;
`/api/generate` becomes a chat of one prompt), and an Ollama as an upstream kind, which
speaks every wire of the pipeline (Ollama serves `/v1` itself).

`/api/generate` to an upstream of another kind: `suffix` (fill-in-the-middle), `raw: true`
(a prompt already templated), `context` (an earlier answer's token state) and a
`template` have no equivalent in a chat and are refused; the answer carries no
`context` for the same reason.
"""

from __future__ import annotations

from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, Mapping

from bridge.core.errors import BadRequest, error_text
from bridge.core.exchange import Frame
from bridge.surfaces.adapter import (
    CHAT,
    EMBED,
    MODELS,
    SHOW,
    Call,
    Kind,
    Outbound,
    Reader,
    Surface,
    Translator,
    Unsupported,
)
from bridge.surfaces.responses import expect

# what a generate request takes besides its prompt, as a chat request takes it
GENERATE_FIELDS = ("format", "options", "think", "keep_alive", "logprobs", "top_logprobs")
# what a chat answer says besides its message, as a generate answer says it
ANSWER_FIELDS = ("done_reason", "total_duration", "load_duration", "prompt_eval_count",
                 "prompt_eval_duration", "eval_count", "eval_duration")
NO_CHAT = ("suffix", "template", "context")  # generate fields a chat cannot express
# a message's fields of text and of lists, as Ollama's `api.Message` declares them
MESSAGE_TEXT = ("role", "content", "thinking", "tool_name", "tool_call_id")
MESSAGE_LISTS = ("images", "tool_calls")


def _streams(payload: dict[str, Any]) -> bool:
    return payload.get("stream") is not False  # Ollama streams unless told not to


def _model(payload: dict[str, Any], *names: str) -> str:
    model = next((payload[name] for name in names if payload.get(name)), None)
    if not isinstance(model, str):
        raise BadRequest("model is required", param="model")
    return model


# the keys of a canonical frame that only adds text, in their order (`_Lines.text_line`)
_TEXT_KEYS = ("model", "created_at", "message", "done")
_MESSAGE_KEYS = ("role", "content")


class _Lines(Translator):
    """A canonical stream as an Ollama wire's NDJSON lines, one per frame, through
    `shape` (None: the canonical frames themselves, which the reader made for this
    stream alone); an error as Ollama's in-band `{"error": …}` line."""

    def __init__(self, shape: Any = None):
        self.shape = shape
        self._model: tuple[Any, bytes] = (None, b"")  # a model, its text lines' first bytes

    def frame(self, native: dict[str, Any]) -> list[Frame]:
        if "error" in native:
            return [Frame.of({"error": native["error"]})]
        if self.shape is not None:
            return [Frame.of(self.shape(native))]
        raw = self.text_line(native)
        return [Frame(raw, native) if raw is not None else Frame.of(native)]

    def text_line(self, native: dict[str, Any]) -> bytes | None:
        """The line of a canonical frame that only adds text (most of a stream's), made
        as `encode_json` makes it, from a template of its bytes; None for any other."""
        message = native.get("message")
        if native.get("done") is not False or type(message) is not dict \
                or tuple(native) != _TEXT_KEYS or tuple(message) != _MESSAGE_KEYS:
            return None
        model, created, content = native["model"], native["created_at"], message["content"]
        if message["role"] != "assistant" or type(model) is not str \
                or type(created) is not str or type(content) is not str:
            return None
        if self._model[0] != model:
            self._model = (model, b'{"model":%s,"created_at":' % encode_basestring(
                model).encode())
        return b'%s%s,"message":{"role":"assistant","content":%s},"done":false}' % (
            self._model[1], encode_basestring(created).encode(),
            encode_basestring(content).encode())

    def failed(self, status: int, message: str) -> list[Frame]:
        return [Frame.of({"error": message})]


class _Native(Surface):
    """An Ollama wire whose requests and answers are the canonical form itself."""

    name = "ollama"
    fields: tuple[str, ...] = ("model",)  # where a request names its model

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> Call:
        model = _model(payload, *self.fields) if self.fields else ""
        return Call(native=payload, model=model,
                    stream=self.family == CHAT and _streams(payload))

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        return native

    def translator(self, call: Call) -> Translator:
        return _Lines()

    def error(self, status: int, message: str, param: str | None = None,
              code: str | None = None) -> dict[str, Any]:
        return {"error": message}


def _typed(value: dict[str, Any], texts: tuple[str, ...], lists: tuple[str, ...],
           where: str = "") -> None:
    """Refuse what Ollama's JSON decoding refuses: a field of `texts` that is not a
    string, one of `lists` that is not an array of strings or objects (an adapter would
    leave it out, and the upstream answer another question)."""
    for name in texts:
        if value.get(name) is not None:
            expect(value[name], str, f"{where}{name}", "a string")
    for name in lists:
        if value.get(name) is not None:
            expect(value[name], list, f"{where}{name}", "an array")


def _settings(payload: dict[str, Any]) -> None:
    """Refuse `options` that are not an object and a `think` that is neither a switch
    nor a level, as Ollama does (left out, the answer would be another one's)."""
    if payload.get("options") is not None:
        expect(payload["options"], dict, "options", "an object")
    if not isinstance(payload.get("think"), (bool, str, type(None))):
        raise BadRequest("'think' must be a boolean or a level", param="think")


class OllamaChat(_Native):
    routes = (("POST", "/api/chat"),)

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> Call:
        _typed(payload, (), ("messages", "tools"))
        _settings(payload)
        for index, message in enumerate(payload.get("messages") or ()):
            where = f"messages[{index}]"
            _typed(expect(message, dict, where, "an object"), MESSAGE_TEXT, MESSAGE_LISTS,
                   f"{where}.")
            for place, call in enumerate(message.get("tool_calls") or ()):
                at = f"{where}.tool_calls[{place}]"
                function = expect(expect(call, dict, at, "an object").get("function"), dict,
                                  f"{at}.function", "an object")
                _typed(function, ("name",), (), f"{at}.function.")
                if function.get("arguments") is not None:
                    expect(function["arguments"], dict, f"{at}.function.arguments",
                           "an object")
        for index, tool in enumerate(payload.get("tools") or ()):
            expect(tool, dict, f"tools[{index}]", "an object")
        return super().request(payload, headers)


class OllamaEmbed(_Native):
    routes = (("POST", "/api/embed"),)
    family = EMBED


class OllamaTags(_Native):
    routes = (("GET", "/api/tags"),)
    family = MODELS
    fields = ()


class OllamaShow(_Native):
    routes = (("POST", "/api/show"),)
    family = SHOW
    fields = ("model", "name")  # `name`: the older form, still accepted

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> Call:
        call = super().request(payload, headers)
        call.native = {**payload, "model": call.model}
        return call


class OllamaGenerate(_Native):
    """`/api/generate` as a chat: the system prompt and the prompt (with its images) as
    two messages; the chat's answer as `response` and `thinking`."""

    routes = (("POST", "/api/generate"),)

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> Call:
        model = _model(payload, "model")
        for name in NO_CHAT:
            if payload.get(name):
                raise Unsupported(name, "a chat API has no equivalent")
        if payload.get("raw") is True:
            raise Unsupported("raw", "a chat API templates every prompt")
        _typed(payload, ("prompt", "system"), ("images",))
        _settings(payload)
        messages = []
        if isinstance(payload.get("system"), str) and payload["system"]:
            messages.append({"role": "system", "content": payload["system"]})
        prompt = payload.get("prompt") if isinstance(payload.get("prompt"), str) else ""
        if prompt or payload.get("images"):
            user: dict[str, Any] = {"role": "user", "content": prompt}
            if payload.get("images"):
                user["images"] = payload["images"]
            messages.append(user)
        native = {"model": model, "messages": messages, "stream": _streams(payload)}
        native.update((name, payload[name]) for name in GENERATE_FIELDS if name in payload)
        return Call(native=native, model=model, stream=native["stream"])

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        return generated(native)

    def translator(self, call: Call) -> Translator:
        return _Lines(generated)


def generated(native: dict[str, Any]) -> dict[str, Any]:
    """A canonical chat answer or stream frame as /api/generate's (no `context`)."""
    message = native.get("message") if isinstance(native.get("message"), dict) else {}
    answer: dict[str, Any] = {"model": native.get("model", ""),
                              "created_at": native.get("created_at", ""),
                              "response": message.get("content") or ""}
    if message.get("thinking"):
        answer["thinking"] = message["thinking"]
    answer["done"] = native.get("done") is True
    answer.update((name, native[name]) for name in ANSWER_FIELDS if name in native)
    if message.get("tool_calls"):
        answer["tool_calls"] = message["tool_calls"]
    return answer


class OllamaReader(Reader):
    """An Ollama's NDJSON stream: its lines are the canonical frames."""

    def frame(self, frame: Frame) -> list[dict[str, Any]]:
        data = frame.data
        return [data] if isinstance(data, dict) else []


class OllamaKind(Kind):
    """An Ollama upstream: every wire forwarded as it is; the canonical form, where a
    crossing asks for it, is its own API."""

    name = "ollama"
    speaks = frozenset(
        [("ollama", endpoint) for endpoint in ("chat", "generate", "embed", "tags", "show",
                                               "version", "ps")]
        + [("openai", endpoint) for endpoint in ("chat", "completions", "embeddings",
                                                 "models")])
    probe = "/api/version"
    ROUTES = {CHAT: ("POST", "/api/chat"), EMBED: ("POST", "/api/embed"),
              MODELS: ("GET", "/api/tags"), SHOW: ("POST", "/api/show")}

    def outbound(self, family: str, native: dict[str, Any]) -> Outbound:
        method, path = self.ROUTES[family]
        return Outbound(method, path, native if method == "POST" else None)

    def whole(self, family: str, body: Any, native: dict[str, Any]) -> dict[str, Any]:
        return body if isinstance(body, dict) else {}

    def reader(self, family: str, native: dict[str, Any]) -> Reader:
        return OllamaReader()

    def error(self, body: Any) -> str:
        return error_text(body)
