"""Paths no surface serves, handed to the pipeline as `UNROUTED` exchanges (on the OpenAI
surface's error shape) when the Lua middleware is on: its script may answer them (the
seed's `/blocked`); one it lets through gets a 404."""

import flask

from bridge.core.exchange import UNROUTED
from bridge.web.proxy import forward
from bridge.web.routes import ALL_METHODS

blueprint = flask.Blueprint("unrouted", __name__)


def unrouted(rest: str) -> flask.Response:
    return forward("openai", UNROUTED)


blueprint.add_url_rule("/", "root", unrouted, methods=ALL_METHODS, defaults={"rest": ""})
blueprint.add_url_rule("/<path:rest>", "any", unrouted, methods=ALL_METHODS)
