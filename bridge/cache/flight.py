"""Single flight: identical misses share one upstream call.

The first miss for a key (the leader) registers a `Flight`; identical requests arriving
before it ends follow it instead of calling the upstream. A producer greenlet reads the
upstream stream into the flight; the leader and every follower read the flight's frames
as they arrive (a streamed follower sees the stream as it is produced). Upstream is
abandoned only when every subscriber has gone (clients hanging up still stop the model).
Across workers the disk tier's leases (`DiskTier.claim`) elect one leader; the other
workers wait for its entry to appear on disk, then replay it.

A flight always ends: by its producer, by an answer or error its leader shares
(`finish_with`: followers are woken with it at once), or, when the leader's exchange
closes without either, by `abandon` (followers go upstream themselves). Ending releases
what the flight holds (`on_end`: the cross-worker lease). The producer owns the
upstream call: the exchange's closers of the stages inside the cache (the admission
slot) run when it stops reading, not when the leader's client leaves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable, Iterator

import gevent
from gevent.event import Event

from bridge.cache.entry import Entry
from bridge.core.events import emit
from bridge.core.exchange import Frame, Response, owned

log = logging.getLogger("bridge.cache")


class Flight:
    """One upstream call in progress and what it produced so far."""

    def __init__(self, key: str, on_end: Callable[["Flight"], None]):
        self.key = key
        self.started = time.monotonic()
        self.frames: list[Frame] = []
        self.codec: str | None = None
        self.outcome: str | None = None   # "complete", "truncated", "timeout", "cancelled"
        self.failure: Response | None = None  # an error answer, shared as is
        self.entry: Entry | None = None       # a whole answer, or one another worker stored
        self.claimed = False                  # holds the cross-worker lease on the key
        self.finished = False
        self.subscribers = 0
        self._on_end = on_end
        self._changed = Event()
        self._producer: gevent.Greenlet | None = None

    # --- the producing side -----------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, Event()
        changed.set()

    def produce(self, response: Response, on_complete: Callable[["Flight"], None],
                on_stop: Callable[[], None] = lambda: None) -> None:
        """Read `response.frames` in a greenlet of its own, publishing each frame;
        `on_stop()` once that greenlet is over, however (even killed before it ran). The
        stream is taken out of `response`: the producer owns it, and closes it."""
        frames, response.frames = response.frames, None
        assert frames is not None
        self.codec = response.codec
        self._producer = gevent.spawn(self._run, response, frames, on_complete)
        self._producer.link(lambda _greenlet: _stopped(frames, on_stop))

    def _run(self, response: Response, frames: Iterator[Frame],
             on_complete: Callable[["Flight"], None]) -> None:
        try:
            with owned(frames):
                for frame in frames:
                    self.frames.append(frame)
                    self._notify()
            self.outcome = response.outcome or "truncated"
        except gevent.GreenletExit:
            self.outcome = "cancelled"
        except Exception:  # noqa: BLE001 - a failing stream must still release its followers
            log.exception("cache: reading the upstream stream failed")
            emit("stage.failed", stage="cache", phase="frames")
            self.outcome = "truncated"
        if self.outcome == "complete":
            try:
                on_complete(self)
            except Exception:  # noqa: BLE001 - storing is best effort; the answer is served
                log.exception("cache: storing the response failed")
        self.finish()

    def finish_with(self, answer: Entry | Response) -> None:
        """End without a stream: a whole answer or an error, shared by the followers."""
        if isinstance(answer, Entry):
            self.entry = answer
            self.outcome = "complete"
        else:
            self.failure = answer
            self.outcome = "failed"
        self.finish()

    def abandon(self) -> None:
        """The leader went away before any answer: followers go upstream themselves."""
        if not self.finished and self._producer is None:
            self.outcome = "abandoned"
            self.finish()

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._on_end(self)
            self._notify()

    # --- the consuming side -----------------------------------------------------------

    def join(self) -> None:
        self.subscribers += 1

    def leave(self) -> None:
        self.subscribers -= 1
        if self.subscribers <= 0 and not self.finished and self._producer is not None:
            self._producer.kill(block=False)  # nobody listens: stop the generation upstream

    def wait(self, timeout: float | None, started: bool = False) -> bool:
        """Wait until the flight ends (or, with `started`, until its first frame);
        False on timeout."""
        with gevent.Timeout(timeout, False):
            while not self.finished and not (started and self.frames):
                self._changed.wait()
            return True
        return False

    def follow(self) -> Iterator[Frame]:
        """The frames as they are produced, from the first."""
        index = 0
        while True:
            while index < len(self.frames):
                yield self.frames[index]
                index += 1
            if self.finished:
                return
            self._changed.wait()

    def shared_failure(self) -> Response | None:
        return None if self.failure is None else replace(self.failure,
                                                         headers=dict(self.failure.headers))


def _stopped(frames: Iterator[Frame], on_stop: Callable[[], None]) -> None:
    """The producer is over: its stream is closed (a no-op unless it was killed before
    it ran), then what it held is given back."""
    try:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
    finally:
        on_stop()


class Flights:
    """The flights in progress in this worker, by cache key."""

    def __init__(self, on_end: Callable[[Flight], None] = lambda _flight: None) -> None:
        self._flights: dict[str, Flight] = {}
        self._on_end = on_end

    def get(self, key: str, max_age: float) -> Flight | None:
        """The flight for `key`, unless it is older than `max_age` seconds (its leader
        failed without ending it: it is forgotten)."""
        flight = self._flights.get(key)
        if flight is not None and time.monotonic() - flight.started > max_age:
            del self._flights[key]
            return None
        return flight

    def lead(self, key: str) -> Flight:
        flight = Flight(key, self._ended)
        self._flights[key] = flight
        return flight

    def _ended(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        self._on_end(flight)
