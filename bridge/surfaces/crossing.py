"""The crossing: an exchange sent to an upstream whose kind does not speak its wire.

Every stage sees the exchange on its wire — `(surface, endpoint)`: the OpenAI API on
`/v1`, Ollama's on `/api`, the translated APIs already made native chats at the edge —
and the upstream client, for each upstream it tries, asks `plan` how to send it there.
An upstream that speaks the wire (an Ollama for `/api` and `/v1`, an OpenAI-compatible
API for `/v1`) gets it as it is: `plan` says None. Any other gets a translation through
the canonical form (Ollama's native API, `bridge.surfaces.adapter`):

    the wire's request  --(the wire's Surface)-->  canonical  --(the upstream's Kind)-->  upstream
    the wire's answer  <--(the wire's Surface)--  canonical  <--(the upstream's Kind)--  upstream

so N client surfaces and M upstream kinds are N + M adapters, and the stages — the
cache and its key, the think filter, usage counting — work on what they always see,
whichever kind answered. Streams are translated frame by frame as they arrive; errors
keep their status and become the wire's error shape; a field the upstream cannot
express is refused with a 400 naming it and the upstream.

One pair is sent as the client wrote it although the pipeline saw it translated: a
request of the Anthropic Messages API to an Anthropic upstream, unless a stage (Lua,
the think filter) changed it on the way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import unquote

from bridge.core import streaming
from bridge.core.errors import BadRequest
from bridge.core.exchange import Exchange, Frame, encode_json, owned
from bridge.core.json_body import parse_object
from bridge.surfaces import adapter_for, edge
from bridge.surfaces.adapter import (
    CHAT,
    Call,
    Kind,
    Outbound,
    Surface,
    Translator,
    Unsupported,
)
from bridge.surfaces.anthropic_kind import AnthropicKind
from bridge.surfaces.ollama import (
    OllamaChat,
    OllamaEmbed,
    OllamaGenerate,
    OllamaKind,
    OllamaShow,
    OllamaTags,
)
from bridge.surfaces.openai import (
    OpenAIChat,
    OpenAICompletions,
    OpenAIEmbeddings,
    OpenAIKind,
    OpenAIModel,
    OpenAIModels,
)

# The pipeline's wires served by translation, each by its client-side adapter.
WIRES: dict[tuple[str, str], Surface] = {
    ("openai", "chat"): OpenAIChat(),
    ("openai", "completions"): OpenAICompletions(),
    ("openai", "embeddings"): OpenAIEmbeddings(),
    ("openai", "models"): OpenAIModels(),
    ("ollama", "chat"): OllamaChat(),
    ("ollama", "generate"): OllamaGenerate(),
    ("ollama", "embed"): OllamaEmbed(),
    ("ollama", "tags"): OllamaTags(),
    ("ollama", "show"): OllamaShow(),
}
# `GET /v1/models/{model}`, which no route of its own serves (forwarded to the kinds
# that speak OpenAI's model routes, translated for the others)
MODEL_WIRE = OpenAIModel()
MODEL_PATH = "/v1/models/"
# The kinds of upstream (`api` of an upstream, `--upstream-api`).
KINDS: dict[str, Kind] = {kind.name: kind for kind in (OllamaKind(), OpenAIKind(),
                                                        AnthropicKind())}
# What `/api/version` says for an upstream that is not an Ollama: the version of
# Ollama's API the translation speaks (clients check it before using newer features).
OLLAMA_API_VERSION = "0.14.0"
_CODECS = {"openai": streaming.SSE, "ollama": streaming.NDJSON}
# endpoint -> (the field whose absence makes a request model control, its answer's part)
_MODEL_CONTROL = {"chat": ("messages", {"message": {"role": "assistant", "content": ""}}),
                  "generate": ("prompt", {"response": ""})}


def kind_of(name: str) -> Kind:
    return KINDS[name]


def local_answer(ex: Exchange, kind: str) -> dict[str, Any] | None:
    """What an Ollama client's requests about the server and its models get when the
    upstream is not an Ollama, which has no such thing: `/api/version` (Open WebUI asks
    it before anything else), `/api/ps`, and a chat or generate request without messages
    or prompt, which only loads (or with `keep_alive: 0` unloads) the model on an
    Ollama. None for every other exchange."""
    if kind == "ollama" or ex.surface != "ollama":
        return None
    if ex.method == "GET" and ex.endpoint == "version":
        return {"version": OLLAMA_API_VERSION}
    if ex.method == "GET" and ex.endpoint == "ps":
        return {"models": []}  # nothing is loaded in memory that the bridge could see
    payload = ex.payload
    if ex.endpoint not in _MODEL_CONTROL or not isinstance(payload, dict):
        return None
    field, part = _MODEL_CONTROL[ex.endpoint]
    if payload.get(field):
        return None
    reason = "unload" if payload.get("keep_alive") in (0, "0", "0s") else "load"
    return {"model": ex.model, "created_at": streaming.ollama_time(), **part, "done": True,
            "done_reason": reason}


@dataclass
class Crossing:
    """One exchange's translation to one upstream: what to send (`outbound`, the body
    already encoded) and how its answers come back onto the exchange's wire."""

    wire: Surface
    kind: Kind
    call: Call
    outbound: Outbound
    body: bytes
    upstream: str  # how errors name the upstream

    @property
    def codec(self) -> str:
        """The stream codec of the exchange's wire (what its stages and client read)."""
        return _CODECS[self.wire.name]

    def whole(self, status: int, body: bytes) -> tuple[int, bytes | Iterator[Frame]]:
        """The wire's answer (status, body) for the upstream's whole answer: a body, or
        the frames of a stream when the client asked for one (the canonical answer as
        the stream's one frame) and the upstream answered whole all the same."""
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError:
            data = None
        if status >= 400:
            return status, self._upstream_error(status, data, body)
        if not isinstance(data, dict):
            return 502, self._error(502, f"upstream {self.upstream} answered with a body "
                                    "that is not a JSON object", "upstream_bad_answer")
        canonical = self.kind.whole(self.wire.family, data, self.call.native)
        if self.call.stream:
            return status, iter(self.wire.translator(self.call).frame(canonical))
        return status, encode_json(self.wire.body(canonical, self.call))

    def _upstream_error(self, status: int, data: Any, body: bytes) -> bytes:
        """An upstream's error body, of its kind's shape, in the wire's error shape."""
        message = self.kind.error(data) if data is not None else ""
        if not message:
            message = body.decode("utf-8", "replace").strip()[:500] or (
                f"upstream {self.upstream} answered {status}")
        return self._error(status, message)

    def _error(self, status: int, message: str, code: str | None = None) -> bytes:
        return encode_json(self.wire.error(status, message, None, code)) + (
            b"\n" if self.wire.name == "ollama" else b"")

    def frames(self, upstream: Iterator[Frame]) -> Iterator[Frame]:
        """The wire's frames for the upstream's, each upstream frame's as it arrives
        (those of one upstream read marked to go out in one write)."""
        reader = self.kind.reader(self.wire.family, self.call.native)
        translator = self.wire.translator(self.call)
        with owned(upstream) as frames:
            for frame in frames:
                canonical = reader.frame(frame)
                out = _translated(translator, canonical) if canonical else canonical
                if out:
                    out[-1].more = frame.more
                    yield from out
            out = _translated(translator, reader.end())
            if out:
                yield from out


def _translated(translator: Translator, canonical: list[dict[str, Any]]) -> list[Frame]:
    """The wire's frames for one upstream frame's canonical frames (an in-band error
    ends the client's stream as its API ends a failed one), all but the last marked to
    go out with the next."""
    if not canonical:
        return []
    if len(canonical) == 1 and "error" not in canonical[0]:  # most upstream frames
        out = translator.frame(canonical[0])
    else:
        out = []
        for native in canonical:
            if "error" in native:
                out.extend(translator.failed(500, str(native["error"])))
            else:
                out.extend(translator.frame(native))
    if len(out) > 1:
        for frame in out[:-1]:
            frame.more = True
    return out


def plan(ex: Exchange, kind_name: str, upstream: str,
         model_map: Mapping[str, str] | None = None) -> Crossing | None:
    """How to send `ex` to an upstream of kind `kind_name` (named `upstream` in errors,
    its model names in `model_map`): None when it speaks the exchange's wire, or when
    the exchange is none of the translated ones (forwarded as it is, for the upstream
    to answer). Raises `BadRequest` for what the upstream cannot express."""
    kind = KINDS[kind_name]
    wire_of = (ex.surface, ex.endpoint)
    if wire_of in kind.speaks:
        return None
    described = _described(ex, kind)
    wire = WIRES.get(wire_of) if described is None else MODEL_WIRE
    if wire is None:
        return None
    payload = ({"model": described} if described is not None
               else ex.payload if isinstance(ex.payload, dict) else _parsed(ex))
    label = f"{upstream!r} ({kind.name} API)"
    try:
        call = wire.request(payload, ex.headers)
        native = dict(call.native)
        model = native.get("model")
        if model_map and isinstance(model, str) and model in model_map:
            native["model"] = model_map[model]
        outbound = kind.outbound(wire.family, native)
    except Unsupported as refusal:
        param = _as_written(refusal.param, adapter_for(ex.api) or wire)
        raise BadRequest(f"{param} cannot be sent to upstream {label}: {refusal.reason}",
                         param=param, code="unsupported_by_upstream") from None
    call.native = native
    body = outbound.body
    asked = edge.asked_of(ex)
    if (asked is not None and ex.api == kind.name and wire.family == CHAT
            and _unchanged(ex, payload)):  # the client's own API: as the client wrote it
        body = {**asked, "model": native.get("model", asked.get("model"))}
    return Crossing(wire, kind, call, outbound, encode_json(body) if body is not None else b"",
                    label)


def _described(ex: Exchange, kind: Kind) -> str | None:
    """The model a `GET /v1/models/{model}` asks about, when `kind` does not speak
    OpenAI's model routes; else None."""
    if (ex.surface, ex.method) != ("openai", "GET") or ("openai", "models") in kind.speaks:
        return None
    name = unquote(ex.path).removeprefix(MODEL_PATH) if ex.path.startswith(MODEL_PATH) else ""
    return name or None


def _as_written(param: str, client: Surface) -> str:
    """A canonical field's name as the client's API writes it."""
    if param in client.fields:
        return client.fields[param]
    if client.name != "ollama" and param.startswith("options."):
        return param.removeprefix("options.")
    return param


def _unchanged(ex: Exchange, payload: dict[str, Any]) -> bool:
    """Whether the native request is still the edge's translation of the client's."""
    call = edge.call_of(ex)
    return call is not None and call.native == payload


def _parsed(ex: Exchange) -> dict[str, Any]:
    """The request body of an exchange no stage parsed (`/api/show`), or {} (a GET)."""
    return parse_object(ex.body) if ex.body.strip() else {}

