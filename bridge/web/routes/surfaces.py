"""The client APIs served by translation to Ollama's native chat (`bridge.surfaces`):
one route per path an adapter serves; another method on it is a 405 in its API's shape."""

from __future__ import annotations

from typing import Callable, Sequence

import flask
from werkzeug.exceptions import MethodNotAllowed

from bridge import surfaces
from bridge.surfaces.adapter import NATIVE_ENDPOINT, NATIVE_SURFACE
from bridge.web.proxy import forward
from bridge.web.routes import ALL_METHODS


def surfaces_blueprint(routes: Sequence[tuple[str, str, str]]) -> flask.Blueprint:
    """A blueprint serving `routes` (method, path, api), each by translation."""
    blueprint = flask.Blueprint("surfaces", __name__)
    methods: dict[tuple[str, str], list[str]] = {}
    for method, path, api in routes:
        methods.setdefault((path, api), []).append(method)
    for (path, api), allowed in methods.items():
        # every method routed here: another one is refused in the API's shape, not
        # forwarded upstream by the /v1 blueprint's catch-all
        blueprint.add_url_rule(path, api + path, _view(api, allowed), methods=ALL_METHODS)
    return blueprint


def _view(api: str, allowed: list[str]) -> Callable[[], flask.Response]:
    def view() -> flask.Response:
        if flask.request.method not in allowed:
            raise MethodNotAllowed(valid_methods=allowed)
        return forward(NATIVE_SURFACE, NATIVE_ENDPOINT, api)

    return view


blueprint = surfaces_blueprint(surfaces.ROUTES)
