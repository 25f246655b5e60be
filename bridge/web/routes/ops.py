"""Operations endpoints: `/health` (the process is up), `/ready` (the upstream answers,
in shared mode accepts the bridge's key, and the worker is not draining for a stop; with
--upstreams, every routed model has a live upstream; with `--redis-url`, a `redis`
detail: "ok", or "degraded" while this instance serves with its own backends, still
200) and, from `bridge.observability.metrics`, `/metrics`. An upstream's probe answers
every `/ready` of the instance for a second (`READY_PROBES`)."""

from __future__ import annotations

from functools import partial

import flask

from bridge import __version__
from bridge.core import lifecycle, redis_link
from bridge.core.pipeline import Pipeline
from bridge.core.upstream import READY, READY_PROBES

blueprint = flask.Blueprint("ops", __name__)

READY_CHECK_TIMEOUT = 2.0


@blueprint.get("/health")
def health() -> flask.Response:
    return flask.jsonify(status="ok", version=__version__)


@blueprint.get("/ready")
def ready() -> tuple[flask.Response, int]:
    if lifecycle.is_draining():  # stopping: take this bridge out of rotation at once
        return flask.jsonify(status="draining", version=__version__), 503

    pipeline: Pipeline = flask.current_app.extensions["bridge.pipeline"]
    routed = pipeline.context.readiness
    if routed is not None:  # several upstreams (--upstreams): the routing stage tells
        ok, said = routed(READY_CHECK_TIMEOUT)
        return flask.jsonify(**said, version=__version__), 200 if ok else 503
    upstream = pipeline.context.upstream
    status = READY_PROBES.get(upstream.base_url, partial(upstream.readiness,
                                                         READY_CHECK_TIMEOUT),
                              READY_CHECK_TIMEOUT)
    detail = {"status": status, "version": __version__}
    redis_status = redis_link.status(pipeline.context.settings)
    if redis_status is not None:
        detail["redis"] = redis_status  # degraded still serves: not a reason for 503
    return flask.jsonify(detail), 200 if status == READY else 503
