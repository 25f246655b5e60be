"""The job runner of one worker: claims due jobs, runs them in background greenlets,
keeps their leases alive, retries what failed, and stores each result once.

Every worker runs one; they share the store, whose claims are atomic, so exactly one
worker runs a job at a time. A worker renews the leases of its jobs every second; a
job whose worker process is gone (a `kill -9`, a crash, the whole bridge restarted)
is released at once, and one whose worker hangs when its lease runs out. A failed
run (a retryable status, a stream cut short, a contained failure) is retried with the
`-i/-m` back-off, up to max(3, 1 + `-a`) runs; other failures are final. A run whose
worker died does not count as one of those: up to `CRASH_ALLOWANCE` more are allowed.

The runner claims nothing before the whole pipeline has started (`begin`, from the
stage's `begin_background`): a job runs through every stage inside the async one. Once
the worker stops (drains), it claims nothing more; at its exit (`stop`) the jobs still
running have until the stop deadline to finish, and the others are handed back to the
queue uncounted, for another worker or the next start.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Callable

import gevent
from gevent.event import Event

from bridge.async_jobs.store import DONE, FAILED, QUEUED, Job, JobStore, Result
from bridge.core import instance, lifecycle, streaming
from bridge.core.errors import InternalError, error_payload
from bridge.core.events import emit
from bridge.core.exchange import Response, encode_json
from bridge.core.redis_link import RedisFull
from bridge.core.upstream import RETRY_STATUSES, Backoff

log = logging.getLogger("bridge.async")

LEASE_SECONDS = 15.0          # a hung worker's job is claimed again after this
HOUSEKEEPING_SECONDS = 1.0    # lease renewal, dead workers' jobs, expired results
POLL_SECONDS = 0.2            # how often an idle runner looks for due jobs
MIN_RUNS = 3                  # async work is retried even when -a is 0
CRASH_ALLOWANCE = 3           # extra claims for a job whose worker died under it
HAND_BACK_WAIT = 2.0          # at exit, longest wait for cut runs to let their exchanges go


def captured(response: Response) -> tuple[Result, bool]:
    """A drained response as a storable result, and whether it succeeded (a stream
    only when it reached its normal end)."""
    headers = {name: value for name, value in response.headers.items()
               if name != "content-length"}
    if response.frames is None:
        return Result(response.status, headers, response.body), response.ok
    codec = response.codec or streaming.RAW
    frames = list(response.frames)
    body = b"".join(streaming.encode(frame, codec) for frame in frames)
    complete = bool(frames) and streaming.is_terminal(frames[-1], codec)
    return Result(response.status, headers, body, codec), response.ok and complete


class Runner:
    """Runs the store's jobs with `execute(job) -> drained Response`."""

    def __init__(self, store: JobStore, execute: Callable[[Job], Response], *, slots: int,
                 retry_attempts: int, backoff: Backoff, keep_seconds: float):
        self.store = store
        self.execute = execute
        self.slots = slots
        self.max_runs = max(MIN_RUNS, 1 + retry_attempts)
        self.backoff = backoff
        self.keep_seconds = keep_seconds
        self.worker = ""
        self._running: dict[tuple[str, str], tuple[Job, gevent.Greenlet]] = {}
        self._wake: Event | None = None
        self._loop_greenlet: gevent.Greenlet | None = None
        self._stopping = False
        self._next_housekeeping = 0.0

    def start(self) -> None:
        """Name this worker's runner (after fork). Nothing is claimed before `begin`."""
        # the pid lets others see the worker died; the token tells a reused pid apart
        self.worker = f"{os.getpid()}:{secrets.token_hex(4)}"

    def begin(self) -> None:
        """Start the runner greenlet: only once every stage of the pipeline has started."""
        self._wake = Event()
        self._loop_greenlet = gevent.spawn(self._loop)

    def wake(self) -> None:
        """Look for due jobs now (one was just queued)."""
        if self._wake is not None:
            self._wake.set()

    def stop(self, deadline: float | None) -> None:
        """Claim nothing more; let the running jobs finish until `deadline` (monotonic
        time; None: now), then cut the others and hand them back to the queue, their run
        not counted (the worker stopped; it did not crash)."""
        self._stopping = True
        running = dict(self._running)
        if running and deadline is not None:
            gevent.joinall([greenlet for _job, greenlet in running.values()],
                           timeout=max(0.0, deadline - time.monotonic()))
        cut = [job for job, greenlet in running.values() if not greenlet.dead]
        gevent.killall([greenlet for job, greenlet in running.values() if not greenlet.dead],
                       timeout=HAND_BACK_WAIT)  # their exchanges close: slots, leases go
        for job in cut:
            try:
                handed = self.store.hand_back(job)
            except Exception:  # noqa: BLE001 - its lease runs out; it runs again then
                log.exception("async job %s: could not be handed back", job.fingerprint)
                continue
            if handed:
                log.info("async job %s handed back unfinished: this worker is stopping",
                         job.fingerprint)
        if self._loop_greenlet is not None:
            self._loop_greenlet.kill(timeout=HAND_BACK_WAIT)

    def _loop(self) -> None:
        assert self._wake is not None
        while True:  # until `stop` ends it: leases are renewed while the last jobs finish
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - a busy or broken store: try again later
                log.exception("the async job runner failed; retrying")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_SECONDS
            if self._running:
                self.store.renew(self.worker, LEASE_SECONDS)
            self.store.release_orphans(instance.pid_alive)
            self.store.purge_expired()
            emit("async.waiting", self.store.count(QUEUED))
        # a draining worker takes nothing new: it would be cut (and run again) at its exit
        while len(self._running) < self.slots and not self._stopping \
                and not lifecycle.is_draining():
            job = self.store.claim(self.worker, LEASE_SECONDS)
            if job is None:
                return
            self._running[job.key] = (job, gevent.spawn(self._run, job))

    def _run(self, job: Job) -> None:
        try:
            if job.attempts > self.max_runs + CRASH_ALLOWANCE:
                self._end(job, FAILED, crashed_result(job))
                return
            if job.attempts == 1:
                emit("async.queue_wait", time.time() - job.created)
            log.info("async job %s: run %d (failed runs allowed: %d; runs cut by a dead "
                     "worker: %d more)", job.fingerprint, job.attempts, self.max_runs,
                     CRASH_ALLOWANCE)
            started = time.perf_counter()
            emit("async.running", 1)
            try:
                result, ok = captured(self.execute(job))
            finally:
                emit("async.running", -1)
            emit("async.run_time", time.perf_counter() - started)
            retryable = result.status in RETRY_STATUSES or (result.codec is not None
                                                            and result.status < 300)
            if ok:
                self._end(job, DONE, result)
            elif retryable and job.attempts < self.max_runs:
                delay = self.backoff.delay(job.attempts)
                log.warning("async job %s: run %d failed (status %d); retrying in %.3fs",
                            job.fingerprint, job.attempts, result.status, delay)
                if self.store.retry_later(job, delay):
                    emit("async.retried")
            else:
                self._end(job, FAILED, result)
        except Exception:  # noqa: BLE001 - the lease runs out and another run takes it
            log.exception("async job %s: the run failed", job.fingerprint)
        finally:
            self._running.pop(job.key, None)
            self.wake()  # a slot is free

    def _end(self, job: Job, status: str, result: Result) -> None:
        if not self._finish(job, status, result):
            log.warning("async job %s: its lease was lost; the other run's result stands",
                        job.fingerprint)
            return
        emit("async.completed" if status == DONE else "async.failed")
        log.info("async job %s %s with status %d after %d run(s)", job.fingerprint,
                 "done" if status == DONE else "failed", result.status, job.attempts)


    def _finish(self, job: Job, status: str, result: Result) -> bool:
        """`store.finish`, waiting while a full Redis refuses the result: the job stays
        in `_running`, so its lease is renewed and no other run of it starts meanwhile;
        False only when the lease is gone or another worker holds it."""
        waited = False
        while True:
            try:
                return self.store.finish(job, status, result, self.keep_seconds)
            except RedisFull:
                if not waited:
                    waited = True
                    log.warning("async job %s: Redis is full; its result is kept here "
                                "(and its lease renewed) until Redis takes it",
                                job.fingerprint)
                time.sleep(HOUSEKEEPING_SECONDS)


def crashed_result(job: Job) -> Result:
    """The final error of a job whose runs kept dying with their worker."""
    err = InternalError(f"async job {job.fingerprint}: its worker died in each of "
                        f"{job.attempts - 1} runs; not retried again")
    return Result(err.status, {"content-type": "application/json"},
                  encode_json(error_payload(job.surface, err)) + b"\n")
