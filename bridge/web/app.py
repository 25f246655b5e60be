"""The application factory: `create_app(settings)` builds the Flask app from settings.

It opens nothing: the pipeline's stages open their files, pools and greenlets in the
worker process on first use (see `bridge.core.pipeline`).
"""

from __future__ import annotations

import logging

import flask
from werkzeug.exceptions import HTTPException

from bridge.console import routes as console
from bridge.core import errors
from bridge.core.errors import BridgeError, error_response
from bridge.core.pipeline import Pipeline
from bridge.core.settings import Settings
from bridge.observability import logs, metrics
from bridge.observability import stage as observe
from bridge.web import fast_hits, paths
from bridge.web.proxy import bare_exchange, to_flask, too_large_message
from bridge.web.routes import ollama_api, openai_api, ops, surfaces, unrouted

log = logging.getLogger("bridge.app")

_HTTP_ERRORS: dict[int, type[BridgeError]] = {
    400: errors.BadRequest, 404: errors.NotFound, 405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge}


def create_app(settings: Settings) -> flask.Flask:
    logs.configure(settings)
    app = flask.Flask("bridge")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_size
    app.extensions["bridge.settings"] = settings
    app.extensions["bridge.pipeline"] = Pipeline(settings)
    app.register_blueprint(openai_api.blueprint)
    app.register_blueprint(ollama_api.blueprint)
    app.register_blueprint(surfaces.blueprint)
    app.register_blueprint(ops.blueprint)
    console.init_app(app, settings)
    if settings.enable_luajit:  # the script sees every path, and may answer any of them
        app.register_blueprint(unrouted.blueprint)
    metrics.init_app(app)
    observe.init_app(app, settings)
    app.before_request(paths.refuse_escaped)  # after the hooks that time and log requests
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    if fast_hits.applies(settings):
        app.wsgi_app = fast_hits.FastHits(app.wsgi_app, settings)  # type: ignore[method-assign]
    app.wsgi_app = paths.NormalPaths(app.wsgi_app)  # type: ignore[method-assign]  # outermost
    return app


def _surface() -> str:
    return "ollama" if flask.request.path.startswith("/api/") else "openai"


def _http_error(exc: HTTPException) -> flask.Response:
    """Werkzeug's own refusals (no route, wrong method, body too large), in our shape."""
    request = flask.request
    status = exc.code or 500
    message = {404: f"no route for {request.path}",
               405: f"method {request.method} not allowed for {request.path}",
               413: too_large_message(request.max_content_length)}.get(status, exc.description
                                                                       or exc.name)
    err = _HTTP_ERRORS.get(status, BridgeError)(message, status=status)
    if status == 405 and getattr(exc, "valid_methods", None):
        err.headers["allow"] = ", ".join(exc.valid_methods)
    return to_flask(bare_exchange(_surface()), error_response(_surface(), err))


def _unexpected_error(exc: Exception) -> flask.Response:
    log.exception("unexpected error while handling %s %s", flask.request.method,
                  flask.request.path)
    err = BridgeError("internal error in the bridge; see its log", code="internal_error")
    return to_flask(bare_exchange(_surface()), error_response(_surface(), err))
