"""The client APIs Ollama serves by translation (`/v1/responses`, …): as Ollama wraps its
native chat handler with middleware, the stand-in wraps its own `/api/chat` with the
bridge's adapters (`bridge.surfaces`), one converter for both: the request becomes a
native chat request, its reply (whole, streamed, or an error) the API's own shape.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

from bridge import surfaces
from bridge.core import streaming
from bridge.core.errors import BadRequest
from bridge.core.exchange import Frame
from bridge.surfaces.adapter import Surface, Translator

from . import routes, wire

NATIVE_CHAT = "/api/chat"
_APIS = {path: api for method, path, api in surfaces.ROUTES if method == "POST"}


def handle(call: routes.Call) -> routes.Reply | routes.StreamReply:
    """The reply to `call`: translated on a path of a translated API, else the stand-in's
    own routes."""
    api = _APIS.get(call.path) if call.method == "POST" else None
    surface = surfaces.adapter_for(api) if api is not None else None
    if surface is None:
        return routes.handle(call)
    try:
        payload = wire.go_decode(call.body)
        if not isinstance(payload, dict):
            raise BadRequest("request body must be a JSON object")
        translated = surface.request(payload, call.headers)
    except wire.GoJSONError as exc:
        return _error(surface, 400, str(exc))
    except BadRequest as exc:
        return _error(surface, 400, exc.message)
    native = dataclasses.replace(call, path=NATIVE_CHAT, body=wire.go_json(translated.native))
    reply = routes.handle(native)
    if isinstance(reply, routes.StreamReply):
        return routes.StreamReply(routes.SSE, _events(reply.frames,
                                                      surface.translator(translated)))
    answer = wire.go_decode(reply.body) if reply.body.strip() else None
    if reply.status != 200 or not isinstance(answer, dict) or "error" in answer:
        message = answer.get("error") if isinstance(answer, dict) else None
        return _error(surface, reply.status, str(message or reply.body.decode()), reply.headers)
    return routes.Reply(200, routes.JSON, _json(surface.body(answer, translated)),
                        generated=reply.generated)


def _json(data: object) -> bytes:
    return wire.go_json(data) + b"\n"  # Ollama's json.Encoder


def _error(surface: Surface, status: int, message: str,
           headers: dict[str, str] | None = None) -> routes.Reply:
    return routes.Reply(status, routes.JSON, _json(surface.error(status, message)),
                        dict(headers or {}))


def _events(native: Iterator[wire.Frame], translator: Translator) -> Iterator[wire.Frame]:
    """The API's events for each native frame: the events of one frame in one write (a
    frame whose events are none writes nothing, unless it ends the stream)."""
    for payload, terminal in native:
        data = wire.go_decode(payload)
        events: list[Frame] = []
        if isinstance(data, dict) and "error" in data:
            events = translator.failed(500, str(data["error"]))
        elif isinstance(data, dict):
            events = translator.frame(data)
        written = b"".join(streaming.encode(event, streaming.SSE) for event in events)
        if written or terminal:
            yield written, terminal

