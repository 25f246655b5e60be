"""The request pipeline: the order in which feature stages see every exchange.

Stages form an onion around the upstream call. `on_request` runs in the order of
`STAGE_ORDER`; a stage may answer early by setting `exchange.response` (a cache hit, a
refusal), and then the stages after it, and the upstream, are skipped. `on_response`
runs in the reverse order for every stage whose `on_request` ran, with the response
whatever produced it (upstream, cache, an error), so outer stages see cache hits too.

A stage that changes a stream wraps `response.frames` in a generator of its own; such
a generator must close the iterator it wraps when it is closed (iterate inside
`with streaming.owned(frames)`), so that a client hanging up reaches the upstream connection.

Stages are built per worker process (after fork) and must not open files, sockets or
greenlets in `__init__`: they do that in `start()`, called once per worker before the
first exchange.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Sequence

from bridge.core.errors import BridgeError, error_response
from bridge.core.exchange import Exchange, Response
from bridge.core.settings import Settings
from bridge.core.upstream import UpstreamClient

log = logging.getLogger("bridge.pipeline")

# The written-down order, outermost first. Each entry is a feature package whose `stage`
# module exposes `make_stage(settings, context) -> Stage | None` (None when it is off).
# Each feature uncomments its own line when it lands.
# Coming later: the Lua hooks (after auth), async requests (before the think filter).
STAGE_ORDER: Sequence[str] = (
    "bridge.observability",  # access log, request metrics: sees every exchange
    "bridge.shared_mode",  # shared mode: client keys, upstream key
    "bridge.think",  # outside the cache: filters hits and misses on the way out
    "bridge.cache",  # lookup (may answer) / store what the upstream produced
    "bridge.rate_limit",  # token bucket: only calls that reach the upstream
    "bridge.admission",  # GPU-slot admission: in-flight cap with a bounded queue
)


class Stage:
    """Base class of a pipeline stage; override what the feature needs."""

    name = "stage"

    def start(self) -> None:
        """Per-worker start: open files, start background greenlets."""

    def on_request(self, ex: Exchange) -> None:
        """See (and change) the request; set `ex.response` to answer without going on."""

    def on_response(self, ex: Exchange) -> None:
        """See (and change, or wrap the stream of) `ex.response`."""


class Context:
    """What stages share within a worker: the settings and the upstream client."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.upstream = UpstreamClient(settings)


class Pipeline:
    def __init__(self, settings: Settings, features: Sequence[str] = STAGE_ORDER):
        self.context = Context(settings)
        self.stages: list[Stage] = []
        for feature in features:
            module = importlib.import_module(feature + ".stage")
            stage = module.make_stage(settings, self.context)
            if stage is not None:
                self.stages.append(stage)
        self._started_pid = 0

    def stage(self, name: str) -> Stage | None:
        return next((stage for stage in self.stages if stage.name == name), None)

    def start(self) -> None:
        """Start every stage once in this process (idempotent; safe after fork)."""
        if self._started_pid == os.getpid():
            return
        self._started_pid = os.getpid()
        for stage in self.stages:
            stage.start()

    def handle(self, ex: Exchange) -> Response:
        self.start()
        entered: list[Stage] = []
        try:
            for stage in self.stages:
                entered.append(stage)
                stage.on_request(ex)
                if ex.response is not None:
                    break
            else:
                ex.response = self.context.upstream.send(ex)
        except BridgeError as err:
            ex.response = error_response(ex.surface, err)
        for stage in reversed(entered):
            try:
                stage.on_response(ex)
            except BridgeError as err:
                ex.response = error_response(ex.surface, err)
        assert ex.response is not None
        ex.response.finish()
        return ex.response
