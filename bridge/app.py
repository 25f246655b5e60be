"""The application factory: `create_app(settings)` builds the Flask app from settings.

It opens nothing: the pipeline's stages open their files, pools and greenlets in the
worker process on first use (see `bridge.pipeline`).
"""

from __future__ import annotations

import logging

import flask
from werkzeug.exceptions import HTTPException

from bridge import logs
from bridge.errors import BridgeError, error_response
from bridge.pipeline import Pipeline
from bridge.proxy import bare_exchange, to_flask
from bridge.routes import ollama_api, openai_api, ops
from bridge.settings import Settings

log = logging.getLogger("bridge.app")

_HTTP_ERRORS = {404: "not_found_error", 405: "invalid_request_error",
                413: "invalid_request_error"}


def create_app(settings: Settings) -> flask.Flask:
    logs.configure(settings)
    app = flask.Flask("bridge")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_size
    app.extensions["bridge.settings"] = settings
    app.extensions["bridge.pipeline"] = Pipeline(settings)
    app.register_blueprint(openai_api.blueprint)
    app.register_blueprint(ollama_api.blueprint)
    app.register_blueprint(ops.blueprint)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _surface() -> str:
    return "ollama" if flask.request.path.startswith("/api/") else "openai"


def _http_error(exc: HTTPException) -> flask.Response:
    status = exc.code or 500
    message = {404: f"no route for {flask.request.path}",
               405: f"method {flask.request.method} not allowed for {flask.request.path}",
               413: "request body too large"}.get(status, exc.description or exc.name)
    err = BridgeError(message, status=status)
    err.type = _HTTP_ERRORS.get(status, "api_error")
    if status == 405 and exc.valid_methods:
        err.headers["allow"] = ", ".join(exc.valid_methods)
    return to_flask(bare_exchange(_surface()), error_response(_surface(), err))


def _unexpected_error(exc: Exception) -> flask.Response:
    log.exception("unexpected error while handling %s %s", flask.request.method,
                  flask.request.path)
    err = BridgeError("internal error in the bridge; see its log", code="internal_error")
    return to_flask(bare_exchange(_surface()), error_response(_surface(), err))
