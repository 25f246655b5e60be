"""The objects that travel through the pipeline: one `Exchange` per client request.

An exchange carries the client's request, the response being built for it (from the
upstream, the cache or a stage answering early), and what stages note along the way
(cache status, attempts, timings). Stages read and change it; nothing else is shared.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from bridge.core import events

log = logging.getLogger("bridge.pipeline")

# Endpoints whose bodies are model requests (parsed, filtered, cached).
MODEL_ENDPOINTS = frozenset({"chat", "completions", "embeddings", "generate", "embed"})
# Endpoint of a path no surface serves: only a stage that asked to see those (the Lua
# middleware) gets it, and answers it or refuses it with a 404.
UNROUTED = "unrouted"


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id(headers: Mapping[str, str]) -> str:
    """The request's id: the client's `X-Request-Id` when it is a sane one, else a new
    one. Logged, sent upstream and returned."""
    given = headers.get("x-request-id", "")
    if given and _REQUEST_ID.match(given):
        return given
    # 32 hex digits; an id, not a secret: no system call for it (random reseeds in each
    # forked worker, so workers never share a sequence)
    return f"{random.getrandbits(128):032x}"


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_json(data: Any) -> bytes:
    """Compact JSON, the way the bridge writes every body and frame it builds itself
    (`json.dumps`'s, with one encoder made once, not one per frame)."""
    return _ENCODE(data).encode()


class Usage(NamedTuple):
    """Tokens of one answer, as its producer reported them."""

    prompt: int
    completion: int


class Saved(NamedTuple):
    """What a cache hit did not cost the upstream: its generated tokens and seconds."""

    tokens: int
    seconds: float


class Budget(NamedTuple):
    """A token budget: prompt + completion tokens of upstream calls per UTC period."""

    tokens: int
    period: str  # "day", "week" (from Monday) or "month" (calendar month)

    def __str__(self) -> str:
        """`N/period`: as `keys list` shows it and as Redis stamps it."""
        return f"{self.tokens}/{self.period}"


_USAGE = re.compile(rb'"(prompt_tokens|completion_tokens|prompt_eval_count|eval_count)"'
                    rb"\s*:\s*(\d+)")
USAGE_MARKERS = (b'"usage"', b'"eval_count"')  # in every body or frame that reports usage


def usage_in(raw: bytes) -> Usage | None:
    """The usage a JSON body or frame reports: OpenAI's `usage`, or Ollama's final counts.
    Read from the bytes without parsing them: inside a JSON string the quotes around
    these names would be escaped, so only real keys match."""
    if USAGE_MARKERS[0] not in raw and USAGE_MARKERS[1] not in raw:  # every frame: no `any`
        return None
    counts = {name: int(value) for name, value in _USAGE.findall(raw)}
    if not counts:
        return None
    return Usage(counts.get(b"prompt_tokens", counts.get(b"prompt_eval_count", 0)),
                 counts.get(b"completion_tokens", counts.get(b"eval_count", 0)))


class Frame:
    """One unit of a stream: an SSE `data:` payload, an NDJSON line, or raw bytes.

    `raw` is what goes on the wire (without framing); `data` is its JSON, parsed on
    first use. A stage that changes a frame builds a new one with `Frame.of(data)`, so
    frames nobody touches are relayed byte for byte.

    `more` says that another frame follows at once, without waiting for the network
    (the stream readers set it on every frame of one upstream read but its last): the
    writer then sends the frames of one read in one write instead of one write each.
    A frame built by a stage has it False: written at once, always safe.

    `event` names an SSE event the bridge writes itself (`event: NAME` before the data
    line: Anthropic's and the Responses API's streams); None for a plain data line.

    `read` is the bytes of the upstream read the frame came in with others (held by each
    of them, not copied), None for any other frame. What looks for some bytes in every
    frame (a think tag, an error, the usage, a credential: mostly in none) looks in
    `frame.read or frame.raw`, again only when that is another object than for the frame
    before, and in the frame itself only when it holds them: a search of bytes for bytes
    costs about as much in a read of 20 frames as in one of them, as it is mostly a fixed
    cost (CPython's `bytes.__contains__` first tries the needle as an int, and clears the
    TypeError that raises; an int needle, `ord("<")`, skips it).
    """

    __slots__ = ("raw", "_data", "verbatim", "more", "event", "read")
    _UNPARSED = object()

    def __init__(self, raw: bytes, data: Any = _UNPARSED, verbatim: bool = False,
                 event: bytes | None = None):
        self.raw = raw
        self._data = data
        self.verbatim = verbatim  # an SSE event that is not a plain data line (comment, event:)
        self.more = False
        self.event = event
        self.read: bytes | None = None

    @classmethod
    def of(cls, data: Any, event: str | None = None) -> "Frame":
        return cls(encode_json(data), data, event=event.encode() if event else None)

    @property
    def is_done(self) -> bool:
        return self.raw == b"[DONE]"

    @property
    def data(self) -> Any:
        """The frame's JSON (dict), or None when it is not JSON (`[DONE]`, raw bytes)."""
        if self._data is Frame._UNPARSED:
            try:
                self._data = None if self.verbatim or self.is_done else json.loads(self.raw)
            except ValueError:
                self._data = None
        return self._data

    def __repr__(self) -> str:
        return f"Frame({self.raw[:60]!r})"


@contextmanager
def owned(frames: Iterator[Frame]) -> Iterator[Iterator[Frame]]:
    """Use a frame iterator and close it afterwards, even when we are closed early.

    Every stage that wraps a stream iterates its input inside `with owned(frames)`, so
    that a client hanging up closes the chain down to the upstream connection.
    """
    try:
        yield frames
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


class Stream:
    """A response's frames, with the finalizers that release what the stream holds (an
    upstream connection, a routing in-flight count, a lease, a slot), each registered
    with `on_close` when it is taken.

    `close()` closes the frames, then runs the finalizers, the last registered first,
    exactly once, whether the stream was read to its end, failed, or was never iterated
    at all: what WSGI's `close()` promises and werkzeug's `ClosingIterator` keeps, and
    what a generator's `finally` cannot, since it never runs for a generator closed
    before its first item. Reading it to its end, or an error while reading it, closes
    it too: what it holds is released as soon as it is of no more use.
    """

    __slots__ = ("_frames", "_finalizers", "closed")

    def __init__(self, frames: Iterator[Frame], *finalizers: Callable[[], None]):
        self._frames = frames
        self._finalizers = list(finalizers)
        self.closed = False

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Frame:
        try:
            return next(self._frames)
        except BaseException:  # the end, a failure, or a greenlet killed while reading
            self.close()
            raise

    def wrap(self, transform: Callable[[Iterator[Frame]], Iterator[Frame]],
             keeps_marks: bool) -> None:
        """Read the stream through `transform(frames)` from now on (`Response.map_frames`).

        One `Stream` holds every layer: what a layer reads is closed, like a finalizer,
        after the layers around it and the finalizers registered after it was wrapped,
        which is the order nested streams would close in, without a `Stream` per layer
        on every frame's way."""
        inner = self._frames
        self._finalizers.extend(_closer_of(inner))
        outer = transform(inner)
        if not keeps_marks:
            self._finalizers.extend(_closer_of(outer))
            outer = _unmarked(outer)
        self._frames = outer

    def on_close(self, finalizer: Callable[[], None]) -> None:
        """Run `finalizer()` when the stream is closed (at once if it already is)."""
        if self.closed:
            _run_each([finalizer], "stream")
        else:
            self._finalizers.append(finalizer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
        finally:  # even when closing the frames failed: every finalizer runs
            finalizers, self._finalizers = self._finalizers, []
            _run_each(finalizers[::-1], "stream")


def _run_each(callbacks: list[Callable[..., None]], what: str, *args: Any) -> None:
    """Call each of `callbacks(*args)` in order; one that fails is logged (with its
    traceback) and counted, and the others still run: nothing stays held for one failing."""
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - a failing closer must not skip the others
            log.exception("closing the %s failed", what)
            events.emit("stage.failed", stage=getattr(callback, "__qualname__", "closer"),
                        phase="closer")


def _unmarked(frames: Iterator[Frame]) -> Iterator[Frame]:
    """The frames with `Frame.more` cleared."""
    for frame in frames:
        frame.more = False
        yield frame


@dataclass
class Replayable:
    """An answer that any identical request would get again, as long as it is current
    (a hit in this worker's memory tier): what lets the web layer answer repeats of a
    request without running the pipeline (`bridge.web.fast_hits`).

    `revisit()` counts one more identical request with the stage that answered and says
    how old the answer is in seconds, or None when it is no longer current (evicted,
    expired, purged). `restamper(sent)`, given the bytes that went out, returns what
    makes the same bytes with each response's own identity (id, created).
    """

    revisit: Callable[[], float | None]
    restamper: Callable[[bytes], Callable[[], bytes]]


@dataclass
class Response:
    """A response on its way to the client: either a whole `body` or a stream of `frames`.

    `codec` says how frames are written: "sse" (`data: …\\n\\n`), "ndjson" (one line
    each) or "raw" (bytes as they came). Header names are lower-case. When a stream
    ends, the stage or client that produced it sets `outcome`: "complete" when the
    terminator (`[DONE]` / `done: true`) was seen, else "truncated" or "timeout".

    A body replayed from a stored entry comes with `memo`, the entry's own scratch dict
    (the same for every replay of it), where stages may keep what they derive from the
    body, and may be a template until the pipeline calls `finish()`: `stamp` then fills
    in what each response gets of its own (id, created), as the last step.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    frames: Iterator[Frame] | None = None
    codec: str | None = None
    outcome: str | None = None
    # Every frame is at hand (a replay from the cache): the writer may send them together
    # instead of one write per frame, since no frame waits for the network.
    ready: bool = False
    memo: dict[Any, Any] | None = field(default=None, repr=False)
    stamp: Callable[[bytes], bytes] | None = field(default=None, repr=False)
    replayable: Replayable | None = field(default=None, repr=False)
    # the stored answer it replays (`bridge.cache`): the same for every replay of one
    # entry, in every tier and worker, another for a refreshed one; None for any other
    source: str | None = field(default=None, repr=False)
    # a refusal's `param` and `code` (the bridge's own errors), whatever the body's shape:
    # for a client API that the body's shape cannot tell them in (`bridge.surfaces`)
    detail: dict[str, Any] | None = field(default=None, repr=False)
    _json: Any = field(default=None, repr=False)

    @property
    def streaming(self) -> bool:
        return self.frames is not None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body's JSON, parsed once; None when it is not JSON."""
        if self._json is None and self.body:
            try:
                self._json = json.loads(self.body)
            except ValueError:
                return None
        return self._json

    def set_body(self, body: bytes) -> None:
        self.body, self._json = body, None

    def map_frames(self, transform: Callable[[Iterator[Frame]], Iterator[Frame]],
                   keeps_marks: bool = False) -> None:
        """Replace the stream by `transform(frames)`, a generator over the current frames.

        The close chain is guaranteed: when the new stream ends, fails or is closed early
        (a client hanging up), `transform` is closed first (its `finally` runs), then the
        frames it was reading, down to the upstream connection.

        `keeps_marks`: the transform promises that a frame it yields with `Frame.more`
        set is followed by another without reading more input that could wait (a stage
        passing each frame on does; one that drops or holds frames must see to it, as
        the think filter does). Otherwise the marks are cleared on the way out: a frame
        dropped after one marked would leave the writer waiting for the network with
        frames in hand.
        """
        frames = self.frames
        if frames is None:
            raise ValueError("map_frames on a response without a stream")
        if not isinstance(frames, Stream):
            frames = self.frames = Stream(frames, *_closer_of(frames))
        frames.wrap(transform, keeps_marks)

    def on_close(self, finalizer: Callable[[], None]) -> None:
        """Run `finalizer()` once this response is done with: when its stream is closed
        (read to its end, failed, or closed unread), or at once for a whole body."""
        frames = self.frames
        if frames is None:
            finalizer()
            return
        if not isinstance(frames, Stream):
            frames = self.frames = Stream(frames, *_closer_of(frames))
        frames.on_close(finalizer)

    def close(self) -> None:
        """Close the stream (and so release what it holds); nothing for a whole body."""
        close = _closer_of(self.frames)
        if close:
            close[0]()

    def finish(self) -> None:
        """The body as it goes out: a template's per-response fields filled in."""
        if self.stamp is not None:
            stamp, self.stamp = self.stamp, None
            self.set_body(stamp(self.body))


def _closer_of(frames: object) -> tuple[Callable[[], None], ...]:
    close = getattr(frames, "close", None)
    return (close,) if close is not None else ()


@dataclass(frozen=True)
class UpstreamTarget:
    """One upstream an exchange may go to (routing, `--upstreams`): where, with which key,
    under which model names. `key`: None passes the request's own credentials on, ""
    sends none, else `Authorization: Bearer <key>` replaces whatever the client sent.
    `model_map` renames the client's model names for this upstream."""

    name: str
    url: str
    key: str | None = field(default=None, repr=False)
    model_map: Mapping[str, str] = field(default_factory=dict)
    api: str = "ollama"              # its kind: "ollama", "openai", "anthropic" (the API it speaks)
    max_concurrency: int = 0         # 0: no slot limit of its own
    rate_limit: int = 0              # calls per second; 0: unlimited
    timeout_ms: int = 0              # 0: the bridge's -t
    weight: float = 1.0

    def upstream_model(self, model: str) -> str:
        """The model's name on this upstream."""
        return self.model_map.get(model, model)


class Route:
    """Where an exchange may go, in order of preference (set by the routing stage on
    `Exchange.route`): the upstream client tries `current`, and before the first byte of
    an answer went to the client fails over to the next candidate. The routing stage
    subclasses it to hear how each attempt went (health, balancing)."""

    __slots__ = ("name", "candidates", "index", "live")

    def __init__(self, name: str, candidates: Sequence[UpstreamTarget], live: int = 0):
        self.name = name                # what the cache keys by: never the upstream chosen
        self.candidates = list(candidates)
        self.index = 0
        # the first `live` candidates are healthy; the others are the last resort
        self.live = live or len(self.candidates)

    @property
    def current(self) -> UpstreamTarget:
        return self.candidates[self.index]

    @property
    def open_candidates(self) -> list[UpstreamTarget]:
        """The healthy candidates not tried yet (the current one at least)."""
        return self.candidates[self.index:max(self.live, self.index + 1)]

    def prefer(self, index: int) -> None:
        """Try candidate `index` first (e.g. it had a free admission slot), the others
        after it in their order."""
        if index != self.index:
            self.candidates.insert(self.index, self.candidates.pop(index))

    def fail_over(self) -> UpstreamTarget | None:
        """Move on to the next candidate; None when there is none."""
        if self.index + 1 >= len(self.candidates):
            return None
        self.index += 1
        return self.current

    def started(self, target: UpstreamTarget) -> None:
        """A call to `target` begins."""

    def answered(self, target: UpstreamTarget, ok: bool) -> None:
        """`target` answered before its first byte went on (`ok`: not a 5xx), or failed
        (`ok` False: connect error, timeout, 5xx): what health and balancing count."""

    def ended(self, target: UpstreamTarget) -> None:
        """The call to `target` is over (whole stream read, or the client left)."""


class UpstreamSlot:
    """A place held for an exchange's upstream call (the admission stage's slot), set on
    `Exchange.slot` by the stage that holds it. The upstream client gives it back while
    it waits between retries, so a back-off does not keep a GPU slot idle, and takes it
    again before the next attempt. This base holds nothing."""

    __slots__ = ()

    def release(self) -> None:
        """Give the place back for a while."""

    def retake(self) -> None:
        """Take a place again; raises a `BridgeError` (e.g. a 503) when none comes."""


@dataclass
class Exchange:
    """One client request and everything the bridge learns while answering it."""

    surface: str                 # "openai" (/v1) or "ollama" (/api): the wire upstream
    endpoint: str                # "chat", "completions", "embeddings", "generate", "embed", …
    method: str
    path: str
    query: str
    headers: dict[str, str]      # the client's end-to-end headers, lower-case names
    body: bytes
    request_id: str
    client_addr: str = ""
    payload: Any = None          # the JSON body of a model request, parsed
    response: Response | None = None
    cache_status: str | None = None   # HIT-MEMORY, HIT-DISK, MISS, BYPASS; None when not cacheable
    # What stages tell each other (each set by one stage, read by those inside or outside it):
    client_key: str | None = None     # NAME of the client key shared mode accepted
    principal: str | None = None      # who asks: set once by `bridge.identity.principal`
    cache_scope: str | None = None    # partitions the cache (e.g. one cache per client key)
    # where the request goes as the cache keys it: None, the configured upstream (-o); with
    # routing, the route's name (the cache key never depends on the upstream chosen)
    upstream: str | None = None
    route: Route | None = None        # the candidate upstreams (routing, --upstreams)
    # The usage the upstream reported for this exchange's call, read where its body or
    # frames are read: set even when the client did not ask for usage and never sees it.
    usage: Usage | None = None
    saved: Saved | None = None        # what a cache hit did not cost (the cache stage)
    budget: Budget | None = None      # the client key's own token budget (shared mode)
    slot: UpstreamSlot | None = None  # the upstream call's admission slot, if one is held
    upstream_attempts: int = 0
    started: float = field(default_factory=time.perf_counter)
    notes: dict[str, Any] = field(default_factory=dict)  # one stage's private scratch space
    raw_path: str = ""           # `path` as the client sent it, percent-encoding kept
    # The API the client speaks: `surface`, or a client API the web layer translates to
    # and from that wire (`bridge.surfaces`: "anthropic", "responses"). What metrics, the
    # access log, the console and the error shapes the client sees are labelled by.
    api: str = ""
    _closers: list[Callable[["Exchange"], None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.api:
            self.api = self.surface

    @property
    def is_model_request(self) -> bool:
        return self.endpoint in MODEL_ENDPOINTS and isinstance(self.payload, dict)

    @property
    def model(self) -> str:
        return str(self.payload.get("model", "")) if isinstance(self.payload, dict) else ""

    @property
    def wants_stream(self) -> bool:
        """Whether the client asked for a stream (Ollama's native API streams by default)."""
        if not isinstance(self.payload, dict) or self.endpoint in ("embeddings", "embed"):
            return False
        if self.surface == "ollama":
            return self.payload.get("stream", True) is not False
        return self.payload.get("stream") is True

    def replace_payload(self, payload: Any) -> None:
        """Change the request body that goes upstream (a stage rewrote the request)."""
        self.payload = payload
        self.body = encode_json(payload)

    def on_close(self, callback: Callable[["Exchange"], None]) -> None:
        """Run `callback(exchange)` once the response has been sent or the client left."""
        self._closers.append(callback)

    @property
    def closer_count(self) -> int:
        """How many closers are registered: a mark for `take_closers`."""
        return len(self._closers)

    def take_closers(self, since: int) -> Callable[[], None]:
        """Take the closers registered after the first `since` ones out of this exchange;
        returns what runs them (as `close` does, at most once). For a stage that hands
        the rest of the exchange to a greenlet of its own: the cache's single-flight
        producer owns the upstream call, and the stages inside it (the admission slot)
        end with that call, not when the client leaves."""
        taken, self._closers = self._closers[since:], self._closers[:since]

        def run() -> None:
            closers = list(taken)
            taken.clear()
            self._run_closers(closers)

        return run

    def close(self) -> None:
        """Run the closers, innermost first, each exactly once; one that fails is logged
        and the others still run."""
        closers, self._closers = self._closers, []
        self._run_closers(closers)

    def _run_closers(self, closers: list[Callable[["Exchange"], None]]) -> None:
        _run_each(closers[::-1], f"exchange [{self.request_id}]", self)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
