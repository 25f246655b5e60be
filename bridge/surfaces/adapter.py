"""The contracts of the translation layer. Its canonical form is Ollama's native API, as
Ollama's own middleware uses it: a chat request and its stream frames (`/api/chat`,
the wire every stage of the pipeline knows), an embedding request and answer
(`/api/embed`), a model list (`/api/tags`) and a model's description (`/api/show`) —
one per `FAMILIES`. Each API is an adapter to and from it, so N client surfaces and M
upstream kinds make N + M adapters:

- a `Surface` (the client's side) turns the client's request into the canonical one
  and the canonical answer back into the client's shape — whole bodies, streams frame
  by frame, and errors;
- a `Kind` (the upstream's side, `api` of an upstream) turns the canonical request into
  what that kind of upstream takes, and its answers — whole, streamed, errors — back
  into the canonical form.

An adapter knows its API's shapes only: no HTTP, no Flask, no stage.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from bridge.core.exchange import Frame

# The wire a translated request goes on: what the pipeline and the upstream see.
NATIVE_SURFACE = "ollama"
NATIVE_ENDPOINT = "chat"
NATIVE_PATH = "/api/chat"


# The families of requests, each with its canonical form (Ollama's native API):
CHAT = "chat"      # /api/chat request; answer: its whole body, or its NDJSON frames (dicts)
EMBED = "embed"    # /api/embed request; answer: {"model", "embeddings", "prompt_eval_count"}
MODELS = "models"  # no request ({}); answer: /api/tags' {"models": [{"name", "model", …}]}
SHOW = "show"      # {"model": NAME}; answer: /api/show's body ("capabilities", "details", …)
FAMILIES = (CHAT, EMBED, MODELS, SHOW)

NAME_DIGITS = 24  # hex digits of a record's name in an answer's id (`bridge.surfaces.stage`)


def new_id(prefix: str) -> str:
    """A fresh identity (`msg_…`, `resp_…`): the prefix and 24 random hex digits."""
    return f"{prefix}_{secrets.token_hex(12)}"


def fresh(token: str) -> str:
    """Another identity of the same kind as `token` (`new_id`'s, or bare random hex): its
    prefix, and as many random hex digits."""
    prefix, _, digits = token.rpartition("_")
    return f"{prefix}_" * bool(prefix) + secrets.token_hex(len(digits) // 2)


@dataclass
class Call:
    """One client request as its adapter translated it: the native chat request that goes
    through the pipeline, and what the answer's translation needs (`Surface.request`
    makes it; an adapter may subclass it for more).

    `ids`: the random tokens of this answer's identities (`new_id`, or a nonce that its
    ids share), found only where they were put in what goes out: a repeat of the answer
    replayed as sent gets fresh ones in their place (`fresh`)."""

    native: dict[str, Any]
    model: str
    stream: bool
    ids: list[str] = field(default_factory=list)
    # Where answers are kept (`bridge.surfaces.stage`), set before the answer is
    # translated: `name` names its record in its id, `remember(nonce, record)` keeps it
    # once complete, `current()` says whether a repeat may name it still (None: repeats
    # go through the adapter); all unset when nothing is kept.
    name: str = ""
    remember: Callable[[str, Any], None] | None = None
    current: Callable[[], bool] | None = None

    def basis(self) -> bytes:
        """What, besides the answer, the record of an answer holds (its conversation)."""
        return b""


def answered_call(message: Mapping[str, Any], waiting: list[tuple[str, str]]) -> str | None:
    """The id of the tool call a native tool message answers, taken out of `waiting`
    (the id and tool name of each call of the assistant's last turn not answered yet):
    the call its `tool_call_id` names, else the first of its `tool_name`, else the first
    waiting one when it names no call; None when it answers none of them."""
    ident = message.get("tool_call_id")
    name = message.get("tool_name") or message.get("name")
    found = next((pair for pair in waiting if pair[0] == ident), None) \
        or next((pair for pair in waiting if name and pair[1] == name), None) \
        or (waiting[0] if waiting and not ident else None)
    if found is None:
        return None
    waiting.remove(found)
    return found[0]


class Translator:
    """Translates one native chat stream into the client's events, frame by frame: never
    buffered, each native frame's events as soon as it arrives."""

    def frame(self, native: dict[str, Any]) -> list[Frame]:
        """The client's events for one native stream frame (`done: true` ends it)."""
        raise NotImplementedError

    def failed(self, status: int, message: str) -> list[Frame]:
        """The events that end a stream which failed after it started (the status of the
        failure's kind: 500 for an in-band error, 503 for a stop)."""
        raise NotImplementedError


class Unsupported(ValueError):
    """What a request asks that the other API cannot express, and that is not harmless
    to drop: the request is refused with a 400 naming the field (`param`, as the
    client wrote it, e.g. "suffix", "options.mirostat", "messages[2].images") and the
    upstream (the crossing adds its name and kind)."""

    def __init__(self, param: str, reason: str):
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


class Surface:
    """One client API served by translation to and from Ollama's native API.

    `name` is the API's label everywhere the client's API shows (metrics, access log,
    console columns) and names its error shape; `routes` are its (method, path) pairs,
    each translated to the native chat. `request` raises a `BridgeError` (400) naming
    what cannot be expressed natively."""

    name: str = ""
    routes: Sequence[tuple[str, str]] = ()
    family: str = CHAT  # which canonical form its requests translate to (`FAMILIES`)
    # the client's names of canonical fields where they differ ("options.X" is "X" in
    # every API but Ollama's): a refusal names the field as the client wrote it
    fields: Mapping[str, str] = MappingProxyType({})
    # whether its answers leave records that a later request may name (`recall`)
    keeps_records: bool = False

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> Call:
        raise NotImplementedError

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        """The whole answer in the client's shape, from the native whole answer."""
        raise NotImplementedError

    def translator(self, call: Call) -> Translator:
        """A translator for the native stream that answers `call`."""
        raise NotImplementedError

    def error(self, status: int, message: str, param: str | None = None,
              code: str | None = None) -> dict[str, Any]:
        """The body of an error with this HTTP status, in the client's shape (with the
        field it concerns and its code, where the shape has room for them)."""
        raise NotImplementedError

    def recall(self, call: Call) -> tuple[str, str] | None:
        """The name of the record of an earlier answer that `call` continues and that
        answer's nonce, if it names one."""
        return None

    def resume(self, call: Call, record: Any, why: str = "") -> None:
        """Complete `call` (its `native`) with the record it named; `record` None (not
        found, or none kept, for `why`): raise the client's error."""

    def relaxed(self, call: Call, status: int, message: str) -> dict[str, Any] | None:
        """The native request to send once more instead of `call.native`, which the
        native chat refused with `status` and `message`; None: the refusal stands."""
        return None


@dataclass(frozen=True)
class Outbound:
    """A canonical request as one kind of upstream takes it: `method` on `path` (from
    the upstream's base URL, e.g. "/v1/chat/completions"), with `body` as JSON (None:
    no body), and the headers its API needs besides the credentials (e.g.
    `anthropic-version`)."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class Reader:
    """Reads one upstream's stream (its frames as `bridge.core.streaming` splits them:
    an SSE event's data, or a named event with `Frame.event`) into canonical chat
    frames (native `/api/chat` stream frames, dicts), each as soon as it can: a
    translated stream is as progressive as the upstream's. What must be whole in the
    canonical form (a tool call whose arguments arrive in pieces) is given once whole.
    An in-band error becomes `{"error": "message"}`; the last canonical frame has
    `done: true` (with `done_reason` and the counts)."""

    def frame(self, frame: Frame) -> list[dict[str, Any]]:
        raise NotImplementedError

    def end(self) -> list[dict[str, Any]]:
        """What is still owed when the upstream's stream ended without its last event
        (nothing, usually: the crossing then ends the stream with an error)."""
        return []


class Kind:
    """One kind of upstream API (`api = "…"` of an upstream, `--upstream-api` of `-o`):
    how the canonical form is sent to it, and how its answers come back.

    `speaks`: the pipeline's wires, (surface, endpoint), that it serves as they are
    (those are forwarded untouched); every other model request is translated.
    `outbound` raises `Unsupported` for what it cannot express."""

    name: str = ""
    speaks: frozenset[tuple[str, str]] = frozenset()
    probe: str = "/"  # the path its kind answers when it is up (`upstreams check`, /ready)
    # what every request to it carries besides the credentials (`anthropic-version`)
    headers: Mapping[str, str] = MappingProxyType({})

    def credentials(self, key: str) -> dict[str, str]:
        """The headers that carry an API key to this kind of upstream."""
        return {"authorization": f"Bearer {key}"}

    def outbound(self, family: str, native: dict[str, Any]) -> Outbound:
        """The request this kind takes for the canonical request `native` of `family`
        (its `stream` as the canonical request says: absent on a chat means true)."""
        raise NotImplementedError

    def whole(self, family: str, body: Any, native: dict[str, Any]) -> dict[str, Any]:
        """The canonical answer for this kind's whole answer `body` (parsed JSON) to the
        canonical request `native`."""
        raise NotImplementedError

    def reader(self, family: str, native: dict[str, Any]) -> Reader:
        """A reader of this kind's stream answering the canonical request `native`."""
        raise NotImplementedError

    def error(self, body: Any) -> str:
        """The message of an error body of this kind ("" when it has none)."""
        return ""
