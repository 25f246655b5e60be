"""The contract of a client API served by translation: a `Surface` adapter turns the
client's request into Ollama's native chat request (`/api/chat`, the wire every stage
of the pipeline knows), and the native answer back into the client's shape — whole
bodies, streams frame by frame, and errors — as Ollama's own middleware does around its
chat handler. An adapter knows its API's shapes only: no HTTP, no Flask, no stage.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from bridge.core.exchange import Frame

# The wire a translated request goes on: what the pipeline and the upstream see.
NATIVE_SURFACE = "ollama"
NATIVE_ENDPOINT = "chat"
NATIVE_PATH = "/api/chat"


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


class Surface:
    """One client API served by translation to and from Ollama's native chat.

    `name` is the API's label everywhere the client's API shows (metrics, access log,
    console columns) and names its error shape; `routes` are its (method, path) pairs,
    each translated to the native chat. `request` raises a `BridgeError` (400) naming
    what cannot be expressed natively."""

    name: str = ""
    routes: Sequence[tuple[str, str]] = ()
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
