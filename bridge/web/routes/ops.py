"""Operations endpoints: `/health` (the process is up), `/ready` (the upstream answers,
and in shared mode accepts the bridge's key; with --upstreams, every routed model has a
live upstream) and, from `bridge.observability.metrics`,
`/metrics`."""

from __future__ import annotations

import time

import flask

from bridge import __version__
from bridge.core.pipeline import Pipeline
from bridge.core.upstream import READY

blueprint = flask.Blueprint("ops", __name__)

READY_CHECK_TIMEOUT = 2.0
READY_REUSE_SECONDS = 1.0
_ready_cache: dict[str, tuple[float, str]] = {}


@blueprint.get("/health")
def health() -> flask.Response:
    return flask.jsonify(status="ok", version=__version__)


@blueprint.get("/ready")
def ready() -> tuple[flask.Response, int]:
    pipeline: Pipeline = flask.current_app.extensions["bridge.pipeline"]
    routed = pipeline.context.readiness
    if routed is not None:  # several upstreams (--upstreams): the routing stage tells
        ok, said = routed(READY_CHECK_TIMEOUT)
        return flask.jsonify(**said, version=__version__), 200 if ok else 503
    upstream = pipeline.context.upstream
    checked_at, status = _ready_cache.get(upstream.base_url, (0.0, ""))
    if time.monotonic() - checked_at > READY_REUSE_SECONDS:
        status = upstream.readiness(READY_CHECK_TIMEOUT)
        _ready_cache[upstream.base_url] = (time.monotonic(), status)
    return flask.jsonify(status=status, version=__version__), 200 if status == READY else 503
