"""Which API the stand-in is (`StandInConfig.kind`): Ollama itself (every route), or a
fake upstream of another kind, for the tests of translation between APIs:

- "openai": an OpenAI-only API (DeepSeek, OpenAI, vLLM…): `/v1/chat/completions`,
  `/v1/completions`, `/v1/embeddings`, `/v1/models` and `/v1/models/{id}` as the
  stand-in serves them; every other path is OpenAI's 404 (`Invalid URL (POST
  /api/chat)`), and with `api_key` set every request wants `Authorization: Bearer`
  (OpenAI's 401 `invalid_api_key` otherwise). Think mode "reasoning_content" gives
  DeepSeek's reasoning.
- "anthropic": Claude's Messages API only: `POST /v1/messages` (the stand-in's own
  translation, `surfaces`), `GET /v1/models` and `/v1/models/{id}` in Anthropic's
  shapes; it wants an `anthropic-version` header, and with `api_key` set an
  `x-api-key` header; everything else, errors and faults included, in Anthropic's
  error shape.

Counting, faults and delays apply to every kind alike (`server`).
"""

from __future__ import annotations

import dataclasses
import time
from urllib.parse import unquote

from bridge.surfaces import ADAPTERS

from . import routes, surfaces, wire
from .config import KINDS

OLLAMA, OPENAI, ANTHROPIC = KINDS

OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                          "/v1/models"})
MODELS_PATH = "/v1/models"
MESSAGES_PATH = "/v1/messages"


def handle(call: routes.Call) -> routes.Reply | routes.StreamReply:
    """The answer of the stand-in's kind to `call`."""
    kind = call.config.kind
    if kind == OPENAI:
        return _openai(call)
    if kind == ANTHROPIC:
        return _anthropic(call)
    return surfaces.handle(call)


def error_reply(kind: str, path: str, status: int, message: str,
                retry_after: float | None = None) -> routes.Reply:
    """An error (an injected fault's too) in the shape of the kind's API on `path`."""
    if kind == OPENAI:
        return routes.error_reply("/v1/", status, message, retry_after)
    if kind == ANTHROPIC:
        return _anthropic_error(status, message, retry_after)
    return routes.error_reply(path, status, message, retry_after)


# ---------------------------------------------------------------- OpenAI-only


def _openai(call: routes.Call) -> routes.Reply | routes.StreamReply:
    if call.config.api_key is not None and not routes.authorized(call):
        return routes.unauthorized_reply("/v1/", "authorization" in call.headers)
    if call.path in OPENAI_PATHS or call.path.startswith(MODELS_PATH + "/"):
        return routes.handle(call)
    return routes.error_reply("/v1/", 404, f"Invalid URL ({call.method} {call.path})",
                              error_type="invalid_request_error")


# ---------------------------------------------------------------- Anthropic-only


def _anthropic(call: routes.Call) -> routes.Reply | routes.StreamReply:
    key = call.headers.get("x-api-key")
    if call.config.api_key is not None and key != call.config.api_key:
        message = "invalid x-api-key" if key else "x-api-key header is required"
        return _anthropic_error(401, message)
    if not call.headers.get("anthropic-version"):
        return _anthropic_error(400, "anthropic-version: header is required")
    if call.path == MESSAGES_PATH and call.method == "POST":
        # the key on, as the stand-in's own routes check it (api_key, entitlements)
        headers = {**call.headers, "authorization": f"Bearer {key}"} if key else call.headers
        return surfaces.handle(dataclasses.replace(call, headers=headers))
    if call.method in ("GET", "HEAD") and call.path == MODELS_PATH:
        models = [_anthropic_model(name) for name in call.config.models]
        return routes.Reply(200, routes.JSON, routes.json_body({
            "data": models, "has_more": False,
            "first_id": models[0]["id"] if models else None,
            "last_id": models[-1]["id"] if models else None}, routes.JSON))
    if call.method in ("GET", "HEAD") and call.path.startswith(MODELS_PATH + "/"):
        name = unquote(call.path[len(MODELS_PATH) + 1:])
        if call.config.catalogue != "any" and not routes.listed(call.config, name):
            return _anthropic_error(404, f"model: {name}")
        return routes.Reply(200, routes.JSON,
                            routes.json_body(_anthropic_model(name), routes.JSON))
    return _anthropic_error(404, "Not Found")


def _anthropic_model(name: str) -> dict:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wire.model_created(name)))
    return {"type": "model", "id": name, "display_name": name, "created_at": created}


def _anthropic_error(status: int, message: str,
                     retry_after: float | None = None) -> routes.Reply:
    return surfaces.error_reply(ADAPTERS[ANTHROPIC], status, message,
                                routes.retry_headers(retry_after))
