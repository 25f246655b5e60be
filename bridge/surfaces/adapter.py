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


def new_id(prefix: str) -> str:
    """A fresh identity (`msg_…`, `resp_…`): the prefix and 24 random hex digits."""
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Call:
    """One client request as its adapter translated it: the native chat request that goes
    through the pipeline, and what the answer's translation needs (`Surface.request`
    makes it; an adapter may subclass it for more).

    `ids`: the identities minted for this answer (`new_id`), each found once in what goes
    out: a repeat of the answer replayed as sent gets fresh ones in their place."""

    native: dict[str, Any]
    model: str
    stream: bool
    ids: list[str] = field(default_factory=list)
    # where answers are kept (`bridge.surfaces.stage`): remember(name, record) keeps what
    # a later request may name (`Surface.recall`); None when nothing is kept
    remember: Callable[[str, Any], None] | None = None


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

    def recall(self, call: Call) -> str | None:
        """The name of the record of an earlier answer that `call` continues, if any."""
        return None

    def resume(self, call: Call, record: Any, why: str = "") -> None:
        """Complete `call` (its `native`) with the record it named; `record` None (not
        found, or none kept, for `why`): raise the client's error."""

    def relaxed(self, call: Call, status: int, message: str) -> dict[str, Any] | None:
        """The native request to send once more instead of `call.native`, which the
        native chat refused with `status` and `message`; None: the refusal stands."""
        return None
