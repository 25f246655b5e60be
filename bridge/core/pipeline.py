"""The request pipeline: the order in which feature stages see every exchange.

Stages form an onion around the upstream call. `on_request` runs in the order of
`STAGE_ORDER`; a stage may answer early by setting `exchange.response` (a cache hit, a
refusal), and then the stages after it, and the upstream, are skipped. `on_response`
runs in the reverse order for every stage whose `on_request` ran, with the response
whatever produced it (upstream, cache, an error), so outer stages see cache hits too.

A stage that changes a stream wraps it with `response.map_frames(transform)`, which
closes the chain down to the upstream connection when a client hangs up. What a stream
holds is registered on it (`Response.on_close`, `Stream`) and released when it is
closed, read or not; a response a stage replaces is closed here, unless the stage took
its stream over (a flight's producer).

Failures are contained, like Kong's plugin phases: an unexpected exception in a stage's
`on_request` or `on_response`, in a frame generator or in a closer costs that one
request (a 500 in the surface's error shape, or an in-band error at the end of a stream
already under way), one log line with the traceback and the request id, and a count in
`bridge_stage_failures_total`. Every stage that was entered still sees the response and
every closer runs exactly once, so no flight, lease or slot stays held.

`run(ex, after=name)` runs only the stages after the named one (and the upstream): the
way to resume an exchange later, e.g. in a background greenlet with `drain`, which
reads a stream to its end on behalf of no client and runs the exchange's closers.

Stages are built per worker process (after fork) and must not open files, sockets or
greenlets in `__init__`. Start-up is one-shot and ordered: `start()` of every stage
(open files and pools), then `begin_background()` of every stage (loops, sweepers,
probes, the async job runner), once per worker before the first exchange. Background
work may run exchanges through the whole pipeline, so it must not begin before every
stage is ready for them; and a call to `Pipeline.start` made while the start is under
way (by the start itself, or by any greenlet it let run) never starts a second time.
`stop()`, called when the worker exits, undoes it, outermost stage first: an outer
stage's background work (a job) still runs through the inner ones while it stops.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any, Callable, Iterator, Sequence

from bridge.core import streaming
from bridge.core.errors import BridgeError, InternalError, error_response
from bridge.core.events import emit
from bridge.core.exchange import Exchange, Frame, Response, UpstreamTarget, owned
from bridge.core.settings import Settings
from bridge.core.upstream import UpstreamClient
from bridge.identity.principal import Principals

log = logging.getLogger("bridge.pipeline")

# The written-down order, outermost first. Each entry is a feature package whose `stage`
# module exposes `make_stage(settings, context) -> Stage | None` (None when it is off).
# Each feature uncomments its own line when it lands.
STAGE_ORDER: Sequence[str] = (
    "bridge.tracing",  # OpenTelemetry: a span around everything else (off: no stage)
    "bridge.observability",  # access log, request metrics: sees every exchange
    "bridge.lua",  # the operator's Lua hooks: before the key checks, after everything else
    "bridge.shared_mode",  # shared mode: client keys, upstream key
    "bridge.async_jobs",  # request_fingerprint: 202 now, the stages inside run as a job
    "bridge.usage",  # the usage ledger: every exchange (hits too) recorded when it closes
    "bridge.routing",  # --upstreams: which upstreams (and keys) serve the model; model lists
    "bridge.surfaces",  # a translated request that continues an earlier answer: completed
    "bridge.think",  # outside the cache: filters hits and misses on the way out
    "bridge.cache",  # lookup (may answer) / store what the upstream produced
    "bridge.budgets",  # token budgets: only calls that reach the upstream (hits are free)
    "bridge.rate_limit",  # token bucket: only calls that reach the upstream
    "bridge.admission",  # GPU-slot admission: in-flight cap with a bounded queue
)


class Stage:
    """Base class of a pipeline stage; override what the feature needs."""

    name = "stage"

    def start(self) -> None:
        """Per-worker start: open files and pools. Nothing here may run an exchange."""

    def begin_background(self) -> None:
        """Per-worker, once every stage has started: start background greenlets (which
        may run exchanges through the pipeline)."""

    def stop(self) -> None:
        """Per-worker stop, once no request is served any more: end background greenlets
        between two units of work and close files."""

    def on_request(self, ex: Exchange) -> None:
        """See (and change) the request; set `ex.response` to answer without going on."""

    def on_response(self, ex: Exchange) -> None:
        """See (and change, or wrap the stream of) `ex.response`."""


class Context:
    """What stages share within a worker: the settings, the upstream client, and the
    pipeline itself (a stage that answers now may resume the stages inside it later,
    with `pipeline.drain(ex, after=its name)`). `readiness`, when a stage sets it, answers
    `/ready` instead of the upstream client: (ready?, what /ready says)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.upstream = UpstreamClient(settings)
        self.principals = Principals(settings)  # who asks: `principals.of(exchange)`
        self.pipeline: Pipeline | None = None  # set by the pipeline that owns this context
        self.readiness: Callable[[float], tuple[bool, dict[str, Any]]] | None = None
        # the upstreams of `--upstreams` (the routing stage sets them): empty, -o alone
        self.upstream_targets: list[UpstreamTarget] = []


class Pipeline:
    def __init__(self, settings: Settings, features: Sequence[str] = STAGE_ORDER):
        self.context = Context(settings)
        self.context.pipeline = self
        self.stages: list[Stage] = []
        for feature in features:
            module = importlib.import_module(feature + ".stage")
            stage = module.make_stage(settings, self.context)
            if stage is not None:
                self.stages.append(stage)
        self._pid = 0  # the process whose start began (a forked worker starts its own)
        self._starter = 0  # the thread (greenlet, under gevent) running that start
        self._ready: threading.Event | None = None  # set once the start has ended
        self._started: list[Stage] = []  # the stages this process started, to stop
        self._stopped = False

    def stage(self, name: str) -> Stage | None:
        return next((stage for stage in self.stages if stage.name == name), None)

    def start(self) -> None:
        """Start every stage, then their background work, once in this process (safe
        after fork). A call while the start is under way never starts again: from the
        start's own greenlet it returns at once, from another it waits for the start."""
        if self._pid == os.getpid():
            ready = self._ready
            if ready is not None and not ready.is_set() \
                    and threading.get_ident() != self._starter:
                ready.wait()
            return
        # marked before anything starts: whatever runs meanwhile sees it as started
        self._pid, self._starter = os.getpid(), threading.get_ident()
        self._ready = threading.Event()  # made here: after fork and gevent's patching
        self._started, self._stopped = [], False
        try:
            _contained_call(self.context.principals, "start")  # the secret, before any stage
            self._started = [stage for stage in self.stages if _contained_call(stage, "start")]
            for stage in self._started:
                _contained_call(stage, "begin_background")
        finally:
            self._ready.set()

    def stop(self) -> None:
        """Stop every stage started in this process (at the worker's exit), outermost
        first, once; a stage that fails to stop is logged and the others still stop."""
        if self._pid != os.getpid() or self._stopped:
            return
        self._stopped = True
        for stage in self._started:
            _contained_call(stage, "stop")

    def handle(self, ex: Exchange) -> Response:
        """Answer a client's exchange with every stage."""
        self.start()
        return self.run(ex)

    def run(self, ex: Exchange, after: str | None = None) -> Response:
        """Run the stages after the one named `after` (all when None), then the upstream
        unless a stage answered; `on_response` goes back out through those stages only."""
        stages = self.stages[self._index(after) + 1:] if after is not None else self.stages
        entered: list[Stage] = []
        current = "upstream"
        try:
            for stage in stages:
                entered.append(stage)
                current = stage.name
                stage.on_request(ex)
                if ex.response is not None:
                    break
            else:
                current = "upstream"
                ex.response = self.context.upstream.send(ex)
        except Exception as exc:  # noqa: BLE001 - contained: costs this request only
            replace(ex, failure_response(ex, exc, current, "on_request"))
        for stage in reversed(entered):
            seen = ex.response
            try:
                stage.on_response(ex)
            except Exception as exc:  # noqa: BLE001 - contained: the outer stages go on
                replace(ex, failure_response(ex, exc, stage.name, "on_response"))
            if seen is not None and seen is not ex.response:
                _close_replaced(seen, ex.response)
        response = ex.response
        assert response is not None
        try:
            response.finish()
        except Exception as exc:  # noqa: BLE001
            response = replace(ex, failure_response(ex, exc, "pipeline", "finish"))
        if response.streaming:
            response.map_frames(lambda frames: _contained(ex, frames), keeps_marks=True)
        return response

    def drain(self, ex: Exchange, after: str | None = None) -> Response:
        """Run a detached exchange (no client waits on it): as `run`, then read a stream to
        its end and run the exchange's closers once. The frames read are kept in the
        returned response, which can be read again."""
        self.start()
        response = self.run(ex, after)
        try:
            if response.frames is not None:
                with owned(response.frames) as frames:
                    kept = list(frames)
                response.frames = iter(kept)
        finally:
            ex.close()
        return response

    def _index(self, name: str) -> int:
        for index, stage in enumerate(self.stages):
            if stage.name == name:
                return index
        raise ValueError(f"no stage named {name!r} in this pipeline")


def _contained_call(stage: Stage | Principals, phase: str) -> bool:
    """`stage.<phase>()`; a failure is logged and counted, and the other stages go on.
    Whether it succeeded."""
    try:
        getattr(stage, phase)()
    except Exception:  # noqa: BLE001 - one stage's failure is said once, not spread
        log.exception("stage %s failed in %s", stage.name, phase)
        emit("stage.failed", stage=stage.name, phase=phase)
        return False
    return True


def replace(ex: Exchange, response: Response) -> Response:
    """Make `response` the exchange's answer, closing the one it replaces: a stream that
    no client will read still releases what it holds (connection, in-flight count)."""
    replaced, ex.response = ex.response, response
    if replaced is not None and replaced is not response:
        _close_replaced(replaced, response)
    return response


def _close_replaced(replaced: Response, by: Response | None) -> None:
    """Close a response a stage replaced, unless its stream lives on in the new one (a
    stage that hands a stream over takes it out of the response: `frames` None)."""
    if replaced.frames is not None and (by is None or by.frames is not replaced.frames):
        try:
            replaced.close()
        except Exception:  # noqa: BLE001 - contained: the answer still goes out
            log.exception("closing a replaced response failed")
            emit("stage.failed", stage="pipeline", phase="closer")


def failure_response(ex: Exchange, exc: Exception, stage: str, phase: str) -> Response:
    """The client's answer when a stage failed: its own error when it raised a
    `BridgeError`, else a 500 that names neither the exception nor its traceback."""
    if isinstance(exc, BridgeError):
        return error_response(ex.surface, exc)
    log.error("stage %s failed in %s [%s]", stage, phase, ex.request_id, exc_info=exc)
    emit("stage.failed", stage=stage, phase=phase)
    return error_response(ex.surface, InternalError(
        f"internal error in the bridge's {stage} stage; request id {ex.request_id}"))


def _contained(ex: Exchange, frames: Iterator[Frame]) -> Iterator[Frame]:
    """The outermost frame generator: a stage failing mid-stream ends the stream with an
    in-band error (the status is already sent) instead of a dropped connection."""
    try:
        yield from frames
    except Exception as exc:  # noqa: BLE001 - contained: costs this stream only
        log.error("a stream failed [%s]", ex.request_id, exc_info=exc)
        emit("stage.failed", stage="stream", phase="frames")
        response = ex.response
        if response is not None:
            response.outcome = "truncated"
        yield streaming.error_frame(ex.surface, "internal error in the bridge; the stream "
                                    f"was cut (request id {ex.request_id})")
