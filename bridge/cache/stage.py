"""The cache stage of the pipeline: look up (and maybe answer), or call once and store.

On the way in: the key of a cacheable request is looked up in memory, then on disk; a
hit answers at once in the shape the client asked for. An identical miss already in
flight in this worker is followed instead of calling the upstream again. Otherwise this
request leads: it asks the upstream for a stream (`stream: true`, and
`stream_options.include_usage` on the OpenAI surface) whatever the client asked, so
that every entry holds the upstream's own frames and serves streamed and whole answers
alike; the client's payload is restored on the way out.

On the way out: a complete stream (terminator seen) or a successful whole body is stored
in both tiers; errors and cut streams never are. Model control is no question: a chat
without messages or a generation without a prompt only loads the model (or, with
`keep_alive: 0`, unloads it), so it always goes upstream, and is never stored (BYPASS);
`keep_alive` is not part of any other request's key (`bridge.cache.keys`). Per request,
`Cache-Control: no-cache` skips the lookup and refreshes the entry, `no-store` bypasses
the cache both ways, `max-age=N` accepts only entries younger than N seconds. Responses
carry `X-Cache` (HIT-MEMORY, HIT-DISK, HIT-REDIS, HIT-FLIGHT, MISS, BYPASS) and, on hits,
`Age`: HIT-REDIS is a hit in the Redis tier shared by instances (`--redis-url`);
HIT-FLIGHT is a request served by an identical one in flight (in this worker or
another), which cost no upstream call of its own.

With `--semantic-cache-model`, an exact miss (no entry, no flight) asks the semantic tier
(`bridge.semantic_cache`) for a stored answer to the same question in other words: served
the same way, marked HIT-SEMANTIC with `X-Cache-Similarity`; the answer of a miss it
embedded is stored as usual plus a semantic entry pointing at its key.

Only clients entitled to the model on that upstream read the tiers or join a flight
(`bridge.identity.entitlement`); the others go upstream on their own. Whatever a request claims
(a flight, a lease) is released when its exchange closes, even when a stage failed, and
a lease not renewed expires after `LEASE_SECONDS`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import gevent

from bridge.cache import replay
from bridge.cache.disk import DiskTier
from bridge.cache.entry import Entry, reported_gpu_seconds
from bridge.cache.flight import Flight, Flights
from bridge.cache.hot import HotTracker
from bridge.cache.keys import cache_key, request_digest
from bridge.cache.memory import MemoryTier
from bridge.cache.records import Records
from bridge.cache.redis_tier import RedisTier, shared_tier
from bridge.cache.sweeper import Sweeper
from bridge.core.errors import (
    BadRequest,
    BridgeError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_response,
)
from bridge.core.events import emit
from bridge.core.exchange import Exchange, Response, Saved, encode_json
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings
from bridge.identity.entitlement import Entitlements
from bridge.tracing import spans

if TYPE_CHECKING:
    from bridge.semantic_cache.lookup import Asked, SemanticCache

log = logging.getLogger("bridge.cache")

CACHEABLE = frozenset({("openai", "chat"), ("openai", "completions"), ("openai", "embeddings"),
                       ("ollama", "chat"), ("ollama", "generate"), ("ollama", "embed")})
HIT_MEMORY, HIT_DISK, HIT_FLIGHT = "HIT-MEMORY", "HIT-DISK", "HIT-FLIGHT"
HIT_SEMANTIC = "HIT-SEMANTIC"
SIMILARITY_HEADER = "x-cache-similarity"
MISS, BYPASS = "MISS", "BYPASS"
NOTE = "cache"
# Keys of recent request bodies: a repeated question skips canonical JSON and hashing.
# A key depends only on the payload, and `body` is its JSON (stages change requests with
# `Exchange.replace_payload`, which keeps the two in step).
KEY_MEMO_ENTRIES = 1024
KEY_MEMO_BODY_LIMIT = 16 * 1024
REMOTE_POLL = 0.05   # how often a worker looks for the entry another worker is producing
CLOCK_SLACK = 1.0    # an entry stored this long before we started waiting is still fresh
# A cross-worker lease lasts this long unless its holder renews it (every third of it,
# while its flight lives): a worker that loses track of one blocks the others at most
# this long, instead of the whole timeout.
LEASE_SECONDS = 15.0
# A JSON escape of a UTF-16 surrogate: only then can the parsed body hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Beyond the longest a leader's upstream call may take, followers wait this much more
# (for the stages around that call: a queue, a rate limit)
WAIT_MARGIN = 5.0
STOP_WAIT = 5.0     # at exit, longest wait for the sweeper to reach a point between statements


@dataclass(frozen=True)
class Control:
    """The client's `Cache-Control` for this request."""

    lookup: bool = True
    store: bool = True
    max_age: float | None = None

    @classmethod
    def parse(cls, headers: dict[str, str]) -> "Control":
        if "cache-control" not in headers and "pragma" not in headers:
            return DEFAULTS  # most requests: nothing to parse
        lookup, store, max_age = True, True, None
        directives = [part.strip().lower() for part in headers.get("cache-control", "").split(",")]
        if "no-cache" in headers.get("pragma", "").lower():
            directives.append("no-cache")
        for directive in directives:
            name, _, value = directive.partition("=")
            if name == "no-store":
                lookup = store = False
            elif name == "no-cache":
                lookup = False
            elif name == "max-age":
                try:
                    max_age = max(0.0, float(value.strip().strip('"')))
                except ValueError:
                    continue
        return cls(lookup=lookup, store=store, max_age=max_age)


DEFAULTS = Control()  # a request without Cache-Control or Pragma


@dataclass
class Pending:
    """What the cache noted about a leading miss, between on_request and on_response."""

    key: str
    control: Control
    flight: Flight | None  # None: on its own (a refresh beside a flight, or not sharing)
    payload: Any  # the client's own payload, restored on the way out
    closers: int = 0  # the exchange's closers up to the cache's (the later ones: inner stages)
    started: float = 0.0  # monotonic time the upstream call began: the entry's recorded cost
    asked: Asked | None = None  # its question, embedded: a semantic entry once stored


class CacheStage(Stage):
    name = "cache"

    def __init__(self, settings: Settings, context: Context):
        self.settings = settings
        self.ttl = settings.cache_ttl / 1000
        # the pipeline's client: its timeouts and retries bound how long followers wait
        self.upstream = context.upstream
        self.memory = MemoryTier(settings.cache_memory_entries, self.ttl,
                                 settings.cache_memory_bytes)
        self.disk: DiskTier | RedisTier | None = None  # the tier behind memory
        self.hot = HotTracker(settings.cache_hot_threshold)
        self.flights = Flights(on_end=self._released)
        self.sweeper: Sweeper | None = None
        self.entitlements = Entitlements(settings, context.upstream, context.principals)
        self._keys: dict[tuple[str, str, str | None, str, bytes], str] = {}
        self.records: Records | None = None  # side records in the tiers, once started
        self.semantic: SemanticCache | None = None
        if settings.semantic_cache_model:  # its libraries (numpy, usearch) loaded only then
            from bridge.semantic_cache.lookup import SemanticCache

            self.semantic = SemanticCache(settings, context.upstream, context.upstream_targets,
                                          request_digest)

    def start(self) -> None:
        self.entitlements.start()
        disk = DiskTier(self.settings.cache_dir, self.ttl, self.settings.cache_max_entries)
        try:
            self.disk = disk.open()
        except Exception as exc:  # noqa: BLE001 - a cache that cannot open must not stop serving
            log.error("cache disk tier unavailable (%s: %s): serving with the memory tier only",
                      type(exc).__name__, exc)
            self.disk = None
        self.disk = shared_tier(self.settings, self.disk)  # with --redis-url: Redis
        self.sweeper = Sweeper(self.memory, self.disk, self.hot)
        self.records = Records(self.memory, self.disk)
        if self.semantic is not None:
            try:
                self.semantic.start()
            except Exception:  # noqa: BLE001 - the response cache serves on without it
                log.exception("semantic cache unavailable: serving with exact hits only")
                self.semantic = None
        self.memory.report()
        self.hot.report()
        if self.disk is not None:
            self.disk.report()

    def begin_background(self) -> None:
        if self.sweeper is not None:
            self.sweeper.start()
        if self.semantic is not None:
            self.semantic.begin_background()

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop(timeout=STOP_WAIT)
        if self.semantic is not None:
            self.semantic.stop()
        if self.disk is not None:
            self.disk.close()

    # --- on the way in ------------------------------------------------------------------

    def on_request(self, ex: Exchange) -> None:
        if not ex.is_model_request or (ex.surface, ex.endpoint) not in CACHEABLE \
                or ex.method != "POST":
            return
        control = Control.parse(ex.headers)
        if not control.store or model_control(ex):
            self._mark(ex, BYPASS)
            emit("cache.bypass")
            return
        reject_lone_surrogates(ex)  # before anything is claimed
        with spans.child(ex, "cache lookup") as span:
            self._look_up(ex, control)
            if span.is_recording():
                status = ex.cache_status or MISS
                span.set_attribute("bridge.cache.result", status)
                if status.startswith("HIT-"):
                    span.set_attribute("bridge.cache.tier", status[4:].lower())

    def _look_up(self, ex: Exchange, control: Control) -> None:
        """Answer `ex` from the tiers, an identical call in flight or a semantic hit, or
        make it the leader of its call (a miss)."""
        key = self._key(ex)
        shape = replay.Shape.of(ex)
        self._mark(ex, MISS)
        shares = self.entitlements.allows(ex)
        asked = None
        if control.lookup and shares:
            count = self.hot.touch(key)
            if self._answer_from_tiers(ex, key, control, shape, count):
                return
            if self._follow_flight(ex, key, shape):
                return
            if self.semantic is not None:
                asked = self.semantic.ask(ex, ex.upstream or self.settings.ollama)
                if asked is not None and self._answer_semantically(ex, asked, control, shape):
                    return
                # an identical request may have begun its call while this one embedded
                if self._follow_flight(ex, key, shape):
                    return
        self._lead(ex, key, control, shares, shape)
        pending = ex.notes.get(NOTE)
        if pending is not None:
            pending.asked = asked

    def wait_limit(self, ex: Exchange) -> float:
        """How long an identical request waits for this one's upstream call: as long as
        that call may legitimately take, fail-over to every candidate of its route
        included (a leader still failing over is not given up on), and a margin."""
        return self.upstream.longest(ex.route) + WAIT_MARGIN

    def _key(self, ex: Exchange) -> str:
        scope = ex.cache_scope
        upstream = ex.upstream or self.settings.ollama
        if len(ex.body) > KEY_MEMO_BODY_LIMIT:
            return cache_key(ex.surface, ex.endpoint, ex.payload, scope, upstream)
        memo_key = (ex.surface, ex.endpoint, scope, upstream, ex.body)
        key = self._keys.get(memo_key)
        if key is None:
            key = cache_key(ex.surface, ex.endpoint, ex.payload, scope, upstream)
            if len(self._keys) >= KEY_MEMO_ENTRIES:
                del self._keys[next(iter(self._keys))]
            self._keys[memo_key] = key
        return key

    def _stored(self, key: str, control: Control, count: int) -> tuple[Entry, str] | None:
        """The entry under `key` from the tiers, young enough for the client, and the
        tier that had it."""
        entry = self.memory.get(key)
        tier = HIT_MEMORY
        if entry is None and self.disk is not None:
            entry = self.disk.get(key)
            tier = getattr(self.disk, "last_hit", HIT_DISK)  # HIT-REDIS from Redis
            if entry is not None:
                self.hot.disk_hit(key, entry, count)
        if entry is None or (control.max_age is not None and entry.age() > control.max_age):
            return None
        return entry, tier

    def _answer_from_tiers(self, ex: Exchange, key: str, control: Control,
                           shape: replay.Shape, count: int) -> bool:
        stored = self._stored(key, control, count)
        if stored is None:
            return False
        entry, tier = stored
        revisit = partial(self._revisit, key, entry) if tier == HIT_MEMORY else None
        self._serve(ex, entry, tier, shape, {}, revisit, key)
        return True

    def _serve(self, ex: Exchange, entry: Entry, tier: str, shape: replay.Shape,
               headers: dict[str, str], revisit: Any = None, key: str | None = None) -> None:
        """Answer `ex` with a stored entry (a hit of `tier`)."""
        headers = {"age": str(int(entry.age())), **headers}
        ex.response = replay.serve_entry(entry, shape, headers, revisit, key)
        self._mark(ex, tier)
        label = tier.removeprefix("HIT-").lower()
        emit("cache.hit", tier=label)
        saved(ex, entry, label)

    def _answer_semantically(self, ex: Exchange, asked: Asked, control: Control,
                             shape: replay.Shape) -> bool:
        """Answer `ex` with the stored answer to the same question in other words."""
        assert self.semantic is not None
        found = self.semantic.nearest(asked)
        if found is None:
            return False
        stored = self._stored(found.key, control, self.hot.touch(found.key))
        if stored is None:
            if control.max_age is None:
                self.semantic.forget(found)  # its answer left the cache
            return False
        self._serve(ex, stored[0], HIT_SEMANTIC, shape,
                    {SIMILARITY_HEADER: f"{found.similarity:.3f}"}, key=found.key)
        return True

    def _revisit(self, key: str, entry: Entry) -> float | None:
        """One more request identical to one this memory hit answered (`Replayable`): it
        counts as the lookup did; the entry's age, or None once it left the memory tier."""
        self.hot.touch(key)
        if self.memory.get(key) is not entry:
            return None
        return entry.age()

    def _subscribe(self, ex: Exchange, flight: Flight, leader: bool = False) -> None:
        flight.join()
        if leader:
            ex.on_close(lambda _ex: (flight.leave(), flight.abandon()))
        else:
            ex.on_close(lambda _ex: flight.leave())

    def _follow_flight(self, ex: Exchange, key: str, shape: replay.Shape) -> bool:
        """Serve this request from an identical one in flight in this worker, if any."""
        flight = self.flights.get(key, self.wait_limit(ex))
        return flight is not None and self._follow(ex, flight, shape)

    def _follow(self, ex: Exchange, flight: Flight, shape: replay.Shape) -> bool:
        """Serve this request from an identical one in flight; False when it must go
        upstream itself (the leader went away)."""
        self._subscribe(ex, flight)
        if not flight.wait(self.wait_limit(ex), started=shape.stream) or \
                flight.outcome == "abandoned":
            return False
        response = self._from_flight(ex, flight, shape)
        if response is None:
            return False
        ex.response = response
        self._flight_hit(ex, flight)
        return True

    def _flight_hit(self, ex: Exchange, flight: Flight) -> None:
        """This request was served by another one's upstream call: a call saved."""
        self._mark(ex, HIT_FLIGHT)
        if flight.failure is None:
            emit("cache.hit", tier="flight")
            if flight.entry is not None:  # else its cost is not known yet: not counted
                saved(ex, flight.entry, "flight")

    def _lead(self, ex: Exchange, key: str, control: Control, shares: bool,
              shape: replay.Shape) -> None:
        """Go upstream: as the leader of `key` in this worker and across workers when the
        client shares (unless a refresh runs beside a flight), else on its own. Notes what
        on_response needs first, so that a failure from here on still ends the flight."""
        pending = ex.notes[NOTE] = Pending(key=key, control=control, flight=None,
                                           payload=ex.payload)
        limit = self.wait_limit(ex)
        if shares and self.flights.get(key, limit) is None:
            flight = pending.flight = self.flights.lead(key)
            self._subscribe(ex, flight, leader=True)  # ends it when the exchange closes
            if control.lookup and self._wait_for_other_worker(key, flight, limit):
                del ex.notes[NOTE]  # another worker answered it
                assert flight.entry is not None
                ex.response = replay.serve_entry(flight.entry, shape, {}, key=key)
                self._flight_hit(ex, flight)
                return
        emit("cache.miss")
        pending.started = time.monotonic()
        upstream_payload = streaming_payload(ex)
        if upstream_payload is not ex.payload:
            ex.replace_payload(upstream_payload)
        pending.closers = ex.closer_count

    def _wait_for_other_worker(self, key: str, flight: Flight, limit: float) -> bool:
        """Claim the cross-worker lease on `key`; while another worker holds it, wait for
        the entry it stores (at most `limit` seconds). True when that entry arrived (it
        ends `flight`)."""
        if self.disk is None:
            return False
        started, deadline = time.time(), time.monotonic() + limit
        while not self.disk.claim(key, LEASE_SECONDS):
            if time.monotonic() > deadline:
                return False
            gevent.sleep(REMOTE_POLL)
            entry = self.disk.get(key)
            if entry is not None and entry.created >= started - CLOCK_SLACK:
                flight.finish_with(entry)
                return True
        flight.claimed = True  # from here on, the flight's end releases the lease
        gevent.spawn(self._keep_lease, flight, limit)
        return False

    def _keep_lease(self, flight: Flight, limit: float) -> None:
        """Renew the lease of a flight while it lives (at most `limit`, the longest its
        leader can legitimately take)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            gevent.sleep(LEASE_SECONDS / 3)
            if flight.finished or self.disk is None or \
                    not self.disk.claim(flight.key, LEASE_SECONDS):
                return

    def _released(self, flight: Flight) -> None:
        if flight.claimed and self.disk is not None:
            self.disk.release(flight.key)

    # --- on the way out -----------------------------------------------------------------

    def on_response(self, ex: Exchange) -> None:
        pending: Pending | None = ex.notes.pop(NOTE, None)
        response = ex.response
        if pending is None or response is None:
            self._headers(ex)
            return
        if pending.payload is not ex.payload:
            ex.replace_payload(pending.payload)
        self.entitlements.learn(ex, response.status)
        shape = replay.Shape.of(ex)
        produced = response.ok and response.streaming
        # the producer owns the upstream call: inner stages end with it (admission slot)
        on_stop = ex.take_closers(pending.closers) if produced else None
        flight = pending.flight
        if flight is None:  # on its own: a flight that nobody else can join
            flight = Flight(pending.key, lambda _flight: None)
            self._subscribe(ex, flight)
        if produced:
            assert on_stop is not None
            flight.produce(response, lambda done: self._store(
                ex, pending.key, self._entry(ex, done.codec, done.frames, pending=pending),
                pending.asked), on_stop)
        elif response.ok and self._storable_body(response):
            entry = self._entry(ex, None, (), body=response.body, pending=pending)
            try:  # stored before the flight ends: its end gives the cross-worker lease back,
                # and a worker waiting on it must then find the entry (as after a stream)
                self._store(ex, pending.key, entry, pending.asked)
            finally:
                flight.finish_with(entry)
        else:
            flight.finish_with(response)
            self._headers(ex)
            return
        ex.response = self._from_flight(ex, flight, shape) or response
        self._headers(ex)

    def _from_flight(self, ex: Exchange, flight: Flight, shape: replay.Shape
                     ) -> Response | None:
        """This client's response from a flight (waiting for its end for a whole answer)."""
        if flight.failure is not None:
            return flight.shared_failure()
        if flight.entry is not None:
            return replay.serve_entry(flight.entry, shape, {}, key=flight.key)
        if flight.codec is None:
            return None
        if shape.stream:
            rewriter = replay.Rewriter(ex.surface, ex.endpoint, shape.include_usage)
            return replay.stream_response(ex.surface, flight.follow(), rewriter, {})
        if not flight.wait(self.wait_limit(ex)) or flight.outcome != "complete":
            return self._incomplete(ex, flight)
        return replay.serve_entry(self._entry(ex, flight.codec, flight.frames), shape, {})

    def _incomplete(self, ex: Exchange, flight: Flight) -> Response:
        """A whole answer was asked for, and the upstream stream did not finish."""
        err: BridgeError
        if flight.outcome == "timeout":
            err = UpstreamTimeout("upstream did not finish the response in time")
        else:
            err = UpstreamUnavailable("upstream stream ended prematurely",
                                      code="upstream_stream_truncated")
        return error_response(ex.surface, err)

    # --- storing ------------------------------------------------------------------------

    @staticmethod
    def _storable_body(response: Response) -> bool:
        data = response.json()
        return isinstance(data, dict) and "error" not in data

    def _entry(self, ex: Exchange, codec: str | None, frames: Any,
               body: bytes | None = None, pending: Pending | None = None) -> Entry:
        """An entry of what the upstream produced; with `pending` (the call that produced
        it, now complete) it records that call's cost."""
        entry = Entry(surface=ex.surface, endpoint=ex.endpoint, model=ex.model,
                      created=time.time(), codec=codec,
                      frames=tuple(frame.raw for frame in frames),
                      verbatim=frozenset(i for i, frame in enumerate(frames) if frame.verbatim),
                      body=body)
        if pending is not None and pending.started:
            entry.upstream_seconds = time.monotonic() - pending.started
            entry.gpu_seconds = reported_gpu_seconds(entry.frames or (body or b"",))
            entry.tokens = ex.usage.completion if ex.usage is not None else 0
        return entry

    def _store(self, ex: Exchange, key: str, entry: Entry, asked: Asked | None = None
               ) -> None:
        if not all(_utf8(data) for data in (*entry.frames, entry.body or b"")):
            log.warning("cache: response of %s not stored (not UTF-8) [%s]", ex.model,
                        ex.request_id)
            return
        replay.prepare(entry)  # once, before the tiers keep (and size) it
        self.memory.put(key, entry)
        if self.disk is not None:
            self.disk.put(key, entry)
        emit("cache.store")
        if asked is not None and self.semantic is not None:
            self.semantic.remember(asked, key)

    # --- headers ------------------------------------------------------------------------

    @staticmethod
    def _mark(ex: Exchange, status: str) -> None:
        ex.cache_status = status

    @staticmethod
    def _headers(ex: Exchange) -> None:
        if ex.cache_status is not None and ex.response is not None:
            ex.response.headers["x-cache"] = ex.cache_status
            if not ex.cache_status.startswith("HIT"):
                ex.response.headers.pop("age", None)


def saved(ex: Exchange, entry: Entry, tier: str) -> None:
    """A hit on `entry`: the upstream time, GPU time (Ollama's own figure when it gave
    one) and generated tokens that this answer did not cost (noted on `ex` too, for the
    usage ledger)."""
    ex.saved = Saved(entry.tokens or 0, entry.upstream_seconds)
    emit("cache.saved_seconds", entry.upstream_seconds, tier=tier)
    emit("cache.saved_gpu_seconds", entry.gpu_seconds if entry.gpu_seconds is not None
         else entry.upstream_seconds, tier=tier)
    if entry.tokens:
        emit("cache.saved_tokens", entry.tokens, tier=tier)


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def model_control(ex: Exchange) -> bool:
    """Whether `ex` only loads or unloads its model: a chat without messages or a
    completion without a prompt (Ollama answers `done_reason` "load", or "unload" with
    `keep_alive: 0`; on `/v1` chat, a 400)."""
    if ex.endpoint in replay.EMBEDDING_ENDPOINTS:
        return False
    return not ex.payload.get("messages" if ex.endpoint == "chat" else "prompt")


def reject_lone_surrogates(ex: Exchange) -> None:
    """A 400 for a body whose strings hold a lone surrogate (`"\\ud800"`): not text, it
    cannot be stored, keyed or sent on as UTF-8."""
    if not _SURROGATE_ESCAPE.search(ex.body):
        return
    try:
        encode_json(ex.payload)
    except UnicodeEncodeError:
        raise BadRequest("request body holds a lone UTF-16 surrogate (an escape in "
                         "\\ud800-\\udfff without its pair), which is not text",
                         code="invalid_unicode") from None


def streaming_payload(ex: Exchange) -> Any:
    """The payload sent upstream by a leading miss: always a stream (with usage), so
    the entry holds the upstream's frames; embeddings go unchanged."""
    payload = ex.payload
    if ex.endpoint in replay.EMBEDDING_ENDPOINTS:
        return payload
    if ex.surface == "ollama":
        return payload if payload.get("stream") is True else {**payload, "stream": True}
    options = payload.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    if payload.get("stream") is True and options.get("include_usage") is True:
        return payload
    options["include_usage"] = True
    return {**payload, "stream": True, "stream_options": options}


def make_stage(settings: Settings, context: Context) -> CacheStage | None:
    return CacheStage(settings, context) if settings.enable_cache else None
