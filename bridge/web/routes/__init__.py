"""Flask blueprints, one per API surface, each declared as a table of routes."""

from __future__ import annotations

from typing import Sequence

import flask

from bridge.web.proxy import forward, forward_other

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def surface_blueprint(name: str, prefix: str, surface: str,
                      routes: Sequence[tuple[str, str, str]]) -> flask.Blueprint:
    """A blueprint serving `routes` (method, path, endpoint kind) and forwarding every
    other path under `prefix` unchanged; a known path with another method is a 405."""
    blueprint = flask.Blueprint(name, __name__, url_prefix=prefix)
    known: dict[str, list[str]] = {}
    for method, path, endpoint in routes:
        known.setdefault(path.lstrip("/"), []).append(method)
        blueprint.add_url_rule(path, endpoint, _forwarder(surface, endpoint), methods=[method])

    def other(rest: str) -> flask.Response:
        return forward_other(surface, rest, known)

    blueprint.add_url_rule("/<path:rest>", "other", other, methods=ALL_METHODS)
    return blueprint


def _forwarder(surface: str, endpoint: str):
    def view(**_path: str) -> flask.Response:  # path variables: the stage reads ex.path
        return forward(surface, endpoint)

    return view
