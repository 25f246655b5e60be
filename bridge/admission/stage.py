"""GPU-slot admission (`--max-concurrency`) and the accounting of upstream calls in flight.

This is the innermost stage: it brackets every upstream call, from just before the
request leaves until the upstream's answer (the whole stream) is over or the client has
gone. It reports upstream calls in flight, their duration and time to first token, and
with `--max-concurrency N` holds one of N instance-wide slots for the whole call. With
`--upstreams`, an upstream's `max_concurrency` is a set of slots of its own, keyed by
its name: a call takes one of the first healthy candidate with room (so calls spread
over the upstreams serving a model within their limits), and waits for one up to
`--max-queue-wait`; the slot follows the call when it fails over.

A slot is a place of `bridge.admission.local_slots`, shared by all workers of the
instance. Requests that find every slot taken wait in a bounded queue (`--max-queue`
places, held the same way) for at most `--max-queue-wait`, polling for a slot and woken at
once when a slot of their own worker frees; a full queue or a wait that runs out gets
503 with `Retry-After`. Waiters are not served strictly in arrival order. With
`--redis-url` the N slots are shared by every instance (`bridge.admission.redis_slots`),
the local ones being their fallback.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from functools import partial
from typing import Iterator

from bridge.admission.local_slots import LockSlots
from bridge.admission.redis_slots import shared_slots
from bridge.core import instance
from bridge.core.errors import ServiceUnavailable
from bridge.core.events import emit
from bridge.core.exchange import Exchange, Frame, UpstreamSlot, UpstreamTarget
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings

log = logging.getLogger("bridge.admission")

POLL_SECONDS = 0.02        # how often a waiter looks for a slot freed by another worker
_CALL = "admission.call"   # ex.notes key of the call in progress


class Call(UpstreamSlot):
    """One upstream call in progress: the slots it holds (the instance's, its upstream's),
    start, and whether it has ended. As `Exchange.slot` it lets the upstream client give
    the slots back during a retry's back-off, or on fail-over, and take them again (for
    the upstream now current)."""

    __slots__ = ("stage", "ex", "held", "started", "first_frame", "ended", "__weakref__")

    def __init__(self, stage: "AdmissionStage", ex: Exchange):
        self.stage = stage
        self.ex = ex
        self.held: list[tuple[LockSlots, int, weakref.finalize]] = []
        self._take(any_candidate=True)
        self.started = time.perf_counter()
        self.first_frame = False
        self.ended = False

    def _take(self, any_candidate: bool) -> None:
        for slots, index in self.stage._acquire(self.ex, any_candidate):
            # a call dropped by an unexpected error still gives its slot back when collected
            self.held.append((slots, index, weakref.finalize(self, slots.give_back, index)))

    def _drop(self) -> list[tuple[LockSlots, int]]:
        """Stop holding the slots; those that were held (the caller gives them back)."""
        held, self.held = self.held, []
        for _, _, unlost in held:
            unlost.detach()
        return [(slots, index) for slots, index, _ in held]

    def release(self) -> None:
        for slots, index in self._drop():
            self.stage._give_back(slots, index)

    def retake(self) -> None:
        if not self.ended and not self.held:
            self._take(any_candidate=False)

    def end(self) -> tuple[float, list[tuple[LockSlots, int]]]:
        """Mark the call over; the seconds it lasted and the slots it still held."""
        self.ended = True
        return time.perf_counter() - self.started, self._drop()


class AdmissionStage(Stage):
    name = "admission"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.limit = settings.max_concurrency
        self.queue_size = settings.max_queue
        self.max_wait = settings.max_queue_wait / 1000
        self.slots: LockSlots | None = None
        self.queue: LockSlots | None = None
        # per routed upstream with a max_concurrency (--upstreams), made on first use
        self.upstream_slots: dict[str, LockSlots] = {}
        self._freed = threading.Event()   # a slot of this worker was given back
        self._hold_seconds = 1.0          # moving average of slot hold time, for Retry-After

    def start(self) -> None:
        if self.limit:
            directory = instance.directory()
            self.slots = shared_slots(self.settings, LockSlots(directory, "upstream-slot",
                                                               self.limit), "upstream-slot")
            if self.queue_size:
                self.queue = LockSlots(directory, "queue-place", self.queue_size)

    # --- the slot ---------------------------------------------------------------------

    def _refuse(self, reason: str, message: str) -> ServiceUnavailable:
        emit("admission.refused", reason=reason)
        retry_after = min(60, max(1, math.ceil(self._hold_seconds)))
        return ServiceUnavailable(message, code="upstream_busy",
                                  headers={"retry-after": str(retry_after)})

    def _acquire(self, ex: Exchange, any_candidate: bool) -> list[tuple[LockSlots, int]]:
        """The slots an upstream call needs: one of the instance's (--max-concurrency)
        and one of its upstream's (`max_concurrency` in --upstreams)."""
        held: list[tuple[LockSlots, int]] = []
        index = self._acquire_instance()
        if index is not None:
            assert self.slots is not None
            held.append((self.slots, index))
        if ex.route is not None:
            try:
                taken = self._acquire_upstream(ex, any_candidate)
            except Exception:
                for slots, index in held:
                    self._give_back(slots, index)
                raise
            if taken is not None:
                held.append(taken)
        return held

    def _upstream_slots(self, target: UpstreamTarget) -> LockSlots | None:
        if not target.max_concurrency:
            return None
        slots = self.upstream_slots.get(target.name)
        if slots is None:
            slots = self.upstream_slots[target.name] = LockSlots(
                instance.directory(), f"upstream-{target.name}-slot", target.max_concurrency)
        return slots

    def _acquire_upstream(self, ex: Exchange, any_candidate: bool
                          ) -> tuple[LockSlots, int] | None:
        """A slot of the first healthy candidate upstream with room, which then goes
        first (balancing within each upstream's max_concurrency, instance-wide); of the
        current one only when not `any_candidate` (a retry, a fail-over). Waits up to
        --max-queue-wait for one, polling; None when the upstream has no limit."""
        route = ex.route
        assert route is not None
        deadline = time.monotonic() + self.max_wait
        queued = False
        while True:
            candidates = route.open_candidates if any_candidate else [route.current]
            for offset, target in enumerate(candidates):
                slots = self._upstream_slots(target)
                index = slots.try_take() if slots is not None else None
                if slots is None or index is not None:
                    route.prefer(route.index + offset)
                    return (slots, index) if slots is not None and index is not None else None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(repr(t.name) for t in candidates)
                raise self._refuse("timeout", f"upstream {names} stayed at its "
                                   f"max_concurrency for {self.max_wait:g}s; retry later")
            if not queued:
                queued = True
                emit("admission.queued")
            freed = self._freed
            freed.wait(min(POLL_SECONDS, remaining))
            if freed.is_set() and self._freed is freed:
                self._freed = threading.Event()

    def _acquire_instance(self) -> int | None:
        if self.slots is None:
            return None
        slot = self.slots.try_take()
        if slot is not None:
            return slot
        place = self.queue.try_take() if self.queue is not None else None
        if place is None:
            raise self._refuse("queue_full", f"all {self.limit} upstream slots are busy and "
                               f"the queue of {self.queue_size} is full; retry later")
        emit("admission.queued")
        emit("admission.waiting", 1)
        deadline = time.monotonic() + self.max_wait
        try:
            while slot is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._refuse("timeout", f"no upstream slot became free within "
                                       f"{self.max_wait:g}s; retry later")
                freed = self._freed
                freed.wait(min(POLL_SECONDS, remaining))
                if freed.is_set() and self._freed is freed:
                    self._freed = threading.Event()
                slot = self.slots.try_take()
        finally:
            assert self.queue is not None
            self.queue.give_back(place)
            emit("admission.waiting", -1)
        return slot

    # --- the call ---------------------------------------------------------------------

    def _give_back(self, slots: LockSlots, slot: int) -> None:
        slots.give_back(slot)
        self._freed.set()

    def on_request(self, ex: Exchange) -> None:
        call = Call(self, ex)
        ex.notes[_CALL] = ex.slot = call
        ex.on_close(self._end)  # the client left before the stream was read
        emit("upstream.in_flight", 1)

    def on_response(self, ex: Exchange) -> None:
        response = ex.response
        if _CALL not in ex.notes or response is None:
            return
        if response.streaming:
            response.map_frames(lambda frames: self._watch(ex, frames), keeps_marks=True)
        # the call ends with its stream, however that ends (read or not), or now
        response.on_close(partial(self._end, ex))

    def _watch(self, ex: Exchange, frames: Iterator[Frame]) -> Iterator[Frame]:
        """The frames, the time to the first one counted as it comes."""
        call: Call = ex.notes[_CALL]
        for frame in frames:
            if not call.first_frame:
                call.first_frame = True
                emit("upstream.ttft", time.perf_counter() - call.started,
                     endpoint=ex.endpoint, surface=ex.api)
            yield frame
            break
        yield from frames  # the others as they are: no step of this one in their way

    def _end(self, ex: Exchange) -> None:
        call: Call | None = ex.notes.get(_CALL)
        if call is None or call.ended:
            return
        held, slots = call.end()
        for place, slot in slots:
            self._give_back(place, slot)
        if slots:
            self._hold_seconds += (held - self._hold_seconds) / 8
        emit("upstream.in_flight", -1)
        status = str(ex.response.status) if ex.response is not None else ""
        emit("upstream.duration", held, endpoint=ex.endpoint, status=status,
             upstream=ex.route.current.name if ex.route is not None else "")


def make_stage(settings: Settings, context: Context) -> Stage | None:
    return AdmissionStage(settings)  # always: it also accounts for upstream calls in flight
