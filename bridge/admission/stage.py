"""GPU-slot admission (`--max-concurrency`) and the accounting of upstream calls in flight.

This is the innermost stage: it brackets every upstream call, from just before the
request leaves until the upstream's answer (the whole stream) is over or the client has
gone. It reports upstream calls in flight, their duration and time to first token, and
with `--max-concurrency N` holds one of N instance-wide slots for the whole call.

A slot is an exclusive `flock` on one of N files in the instance's run directory: the
lock is the slot, shared by all workers, and the kernel frees it if a worker dies.
Requests that find every slot taken wait in a bounded queue (`--max-queue` places,
held the same way) for at most `--max-queue-wait`, polling for a slot and woken at
once when a slot of their own worker frees; a full queue or a wait that runs out gets
503 with `Retry-After`. Waiters are not served strictly in arrival order. With
`--redis-url` the N slots are shared by every instance (`bridge.admission.redis_slots`),
these lock files being their fallback.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import random
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator

from bridge.core import instance
from bridge.core.errors import ServiceUnavailable
from bridge.core.events import emit
from bridge.core.exchange import Exchange, Frame, UpstreamSlot
from bridge.core.forking import PerProcess
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings

log = logging.getLogger("bridge.admission")

POLL_SECONDS = 0.02        # how often a waiter looks for a slot freed by another worker
_CALL = "admission.call"   # ex.notes key of the call in progress


class LockSlots:
    """`count` interchangeable places shared by all processes: a place is a held flock."""

    def __init__(self, directory: Path, name: str, count: int):
        self.paths = [directory / f"{name}-{index}.lock" for index in range(count)]
        # descriptors of this process, opened after fork (a flock is shared across fork),
        # and the places it holds (its own flocks do not exclude it)
        self._held = PerProcess(lambda: ([os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                                          for path in self.paths], set[int]()))

    def try_take(self) -> int | None:
        """Take a free place without waiting; its index, or None when all are taken."""
        fds, taken = self._held.get()
        first = random.randrange(len(fds))
        for step in range(len(fds)):
            index = (first + step) % len(fds)
            if index in taken:
                continue
            try:
                fcntl.flock(fds[index], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            taken.add(index)
            return index
        return None

    def give_back(self, index: int) -> None:
        fds, taken = self._held.get()
        if index in taken:
            taken.discard(index)
            fcntl.flock(fds[index], fcntl.LOCK_UN)


class Call(UpstreamSlot):
    """One upstream call in progress: its slot (if any), start, and whether it has ended.
    As `Exchange.slot` it lets the upstream client give the slot back during a retry's
    back-off and take one again."""

    __slots__ = ("stage", "slot", "started", "first_frame", "ended", "_unlost", "__weakref__")

    def __init__(self, stage: "AdmissionStage"):
        self.stage = stage
        self.slot: int | None = None
        self._unlost: weakref.finalize | None = None
        self._hold(stage._acquire())
        self.started = time.perf_counter()
        self.first_frame = False
        self.ended = False

    def _hold(self, slot: int | None) -> None:
        self.slot = slot
        slots = self.stage.slots
        # a call dropped by an unexpected error still gives its slot back when collected
        self._unlost = (weakref.finalize(self, slots.give_back, slot)
                        if slots is not None and slot is not None else None)

    def _drop(self) -> int | None:
        """Stop holding the slot; the slot that was held (the caller gives it back)."""
        slot, self.slot = self.slot, None
        if self._unlost is not None:
            self._unlost.detach()
            self._unlost = None
        return slot

    def release(self) -> None:
        slot = self._drop()
        if slot is not None:
            self.stage._give_back(slot)

    def retake(self) -> None:
        if not self.ended and self.slot is None and self.stage.slots is not None:
            self._hold(self.stage._acquire())

    def end(self) -> tuple[float, int | None]:
        """Mark the call over; the seconds it lasted and the slot it still held."""
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
        self._freed = threading.Event()   # a slot of this worker was given back
        self._hold_seconds = 1.0          # moving average of slot hold time, for Retry-After

    def start(self) -> None:
        if self.limit:
            directory = instance.directory()
            # imported here: the Redis slots build on this module's (their fallback)
            from bridge.admission.redis_slots import shared_slots

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

    def _acquire(self) -> int | None:
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

    def _give_back(self, slot: int) -> None:
        assert self.slots is not None
        self.slots.give_back(slot)
        self._freed.set()

    def on_request(self, ex: Exchange) -> None:
        call = Call(self)
        ex.notes[_CALL] = ex.slot = call
        ex.on_close(self._end)  # the client left before the stream was read
        emit("upstream.in_flight", 1)

    def on_response(self, ex: Exchange) -> None:
        response = ex.response
        if _CALL not in ex.notes or response is None:
            return
        if response.streaming:
            response.map_frames(lambda frames: self._watch(ex, frames))
        else:
            self._end(ex)

    def _watch(self, ex: Exchange, frames: Iterator[Frame]) -> Iterator[Frame]:
        call: Call = ex.notes[_CALL]
        try:
            for frame in frames:
                if not call.first_frame:
                    call.first_frame = True
                    emit("upstream.ttft", time.perf_counter() - call.started,
                         endpoint=ex.endpoint, surface=ex.surface)
                yield frame
        finally:
            self._end(ex)

    def _end(self, ex: Exchange) -> None:
        call: Call | None = ex.notes.get(_CALL)
        if call is None or call.ended:
            return
        held, slot = call.end()
        if slot is not None:
            self._give_back(slot)
            self._hold_seconds += (held - self._hold_seconds) / 8
        emit("upstream.in_flight", -1)
        status = str(ex.response.status) if ex.response is not None else ""
        emit("upstream.duration", held, endpoint=ex.endpoint, status=status)


def make_stage(settings: Settings, context: Context) -> Stage | None:
    return AdmissionStage(settings)  # always: it also accounts for upstream calls in flight
