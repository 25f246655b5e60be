"""The client APIs Ollama serves around its chat handler (`/v1/messages`), served the
same way: the request is translated into a native chat request, answered by the
stand-in's own `/api/chat`, and the answer translated back, with the bridge's own
adapters (`bridge.surfaces`) — one converter, not two copies. Written as Go writes it:
`event: NAME\\ndata: JSON\\n\\n` per event (middleware.writeSSE), whole bodies and
errors with json.Encoder's newline.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

from bridge.core.errors import BridgeError, error_text
from bridge.surfaces import ADAPTERS, api_of
from bridge.surfaces.adapter import NATIVE_PATH, Call, Surface

from . import routes, wire

JSON = "application/json"
SSE = "text/event-stream"


def handle(call: routes.Call) -> routes.Reply | routes.StreamReply:
    """The answer to `call`: by translation on a client API's path, else the routes'."""
    api = api_of(call.path)
    if api is None:
        return routes.handle(call)
    if call.method != "POST":
        return routes.Reply(404, "text/plain", b"404 page not found")  # gin: POST only
    surface = ADAPTERS[api]
    try:
        payload = json.loads(call.body)
        if not isinstance(payload, dict):
            raise ValueError("the body is not a JSON object")
        translated = surface.request(payload, call.headers)
    except ValueError as exc:
        return error_reply(surface, 400, str(exc))
    except BridgeError as err:
        return error_reply(surface, err.status, err.message)
    native = _chat(call, translated.native)
    if isinstance(native, routes.Reply) and native.status != 200:
        relaxed = surface.relaxed(translated, native.status, _message(native.body))
        if relaxed is not None:  # as Ollama relaxes what its chat handler would refuse
            native = _chat(call, relaxed)
    if isinstance(native, routes.StreamReply):
        return routes.StreamReply(SSE, _events(surface, translated, native.frames))
    if native.status != 200:
        return error_reply(surface, native.status, _message(native.body), native.headers)
    body = surface.body(json.loads(native.body), translated)
    return routes.Reply(200, JSON, wire.go_json(body) + b"\n", generated=native.generated)


def _chat(call: routes.Call, native: dict) -> routes.Reply | routes.StreamReply:
    """The stand-in's own /api/chat answer to a native request."""
    return routes.handle(dataclasses.replace(call, path=NATIVE_PATH, body=wire.go_json(native)))


def _events(surface: Surface, call: Call, frames: Iterator[wire.Frame]) -> Iterator[wire.Frame]:
    translator = surface.translator(call)
    for payload, terminal in frames:
        data = json.loads(payload)
        if "error" in data:
            events = translator.failed(500, str(data["error"]))
        else:
            events = translator.frame(data)
        written = b"".join(b"event: %s\ndata: %s\n\n" % (event.event or b"message",
                                                          wire.go_json(event.data))
                           for event in events)
        if written or terminal:  # an empty chunk would end a chunked body
            yield written, terminal


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    return error_text(data) or body.decode("utf-8", "replace")


def error_reply(surface: Surface, status: int, message: str,
                headers: dict[str, str] | None = None) -> routes.Reply:
    """An error in the shape of the client API `surface` serves."""
    return routes.Reply(status, JSON, wire.go_json(surface.error(status, message)) + b"\n",
                        dict(headers or {}))
