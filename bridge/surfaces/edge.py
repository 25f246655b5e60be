"""The edge between a client API served by translation and the pipeline: the request
becomes a native chat exchange (`begin`), and whatever answers it — the upstream, the
cache, a stage's refusal, an error before the pipeline — goes back in the client's
shape (`finish`): whole bodies, streams translated frame by frame as they arrive, and
every error with its status and headers (Retry-After, WWW-Authenticate, Allow) kept.

Every stage works unchanged on the native exchange, so a stream and a whole request
mean the same native request and hit each other's cache entries; each answer, a replay
included, gets identities of its own from the adapter.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from typing import Callable, Iterator

from bridge.core import events, streaming
from bridge.core.errors import error_text
from bridge.core.exchange import Exchange, Frame, Replayable, Response, encode_json, owned
from bridge.surfaces import adapter_for
from bridge.surfaces.adapter import (
    NATIVE_ENDPOINT,
    NATIVE_PATH,
    NATIVE_SURFACE,
    Call,
    Surface,
    Translator,
    fresh,
)

log = logging.getLogger("bridge.surfaces")

_CALL = "surfaces.call"  # ex.notes: the adapter's `Call` for this exchange
_SENT = "surfaces.sent"  # ex.notes: the client's headers, before any stage changed them
_TRANSLATOR = "surfaces.translator"  # ex.notes: the stream's `Translator`, once streaming
_ASKED = "surfaces.asked"  # ex.notes: the client's request (without `ASYNC_FIELD`)
ASYNC_FIELD = "request_fingerprint"  # an async job's name (`bridge.async_jobs`)
ACCEPTED = 202  # an async job's status: the same body on every API
JSON = "application/json"


def translated(ex: Exchange) -> bool:
    """Whether the client speaks an API that this edge translates."""
    return ex.api != ex.surface and adapter_for(ex.api) is not None


def call_of(ex: Exchange) -> Call | None:
    """The adapter's translation of a translated exchange (None for any other)."""
    return ex.notes.get(_CALL)


def begin(ex: Exchange) -> None:
    """Make `ex` (its body parsed into `ex.payload`) the native chat exchange that means
    the same; raises a `BridgeError` (in the client's shape, through `finish`) for a
    request the native chat cannot express."""
    assert isinstance(ex.payload, dict)
    asked = {name: value for name, value in ex.payload.items() if name != ASYNC_FIELD}
    call = adopt(ex, ex.api, asked, ex.headers)
    ex.surface, ex.endpoint, ex.path, ex.raw_path = NATIVE_SURFACE, NATIVE_ENDPOINT, NATIVE_PATH, ""
    ex.query = ""  # the client API's own parameters (`?beta=true`) mean nothing natively
    if ASYNC_FIELD in ex.payload:  # the async stage takes it out again
        ex.replace_payload({**call.native, ASYNC_FIELD: ex.payload[ASYNC_FIELD]})
    else:
        ex.replace_payload(call.native)


def adopt(ex: Exchange, api: str, asked: dict, headers: dict[str, str]) -> Call:
    """Make `ex` answer a request the client sent on `api` (`asked`, with `headers`) in
    that API's shape: at the edge, and for an async job's run and its stored native
    result (`bridge.async_jobs`). Raises `BadRequest` for what the native chat cannot
    express."""
    surface = adapter_for(api)
    assert surface is not None
    call = surface.request(asked, headers)
    ex.api = api
    ex.notes[_CALL], ex.notes[_SENT], ex.notes[_ASKED] = call, dict(headers), asked
    return call


def asked_of(ex: Exchange) -> dict | None:
    """The client's request of a translated exchange, as its API writes it (None for
    any other exchange)."""
    return ex.notes.get(_ASKED)


def relaxed(ex: Exchange, response: Response) -> Exchange | None:
    """The exchange to run once more instead of `ex`, when its adapter relaxes what the
    native chat refused (`Surface.relaxed`); None when the refusal stands. `ex` is over:
    its response is closed and its closers have run."""
    surface = adapter_for(ex.api)
    call: Call | None = ex.notes.get(_CALL)
    if (surface is None or call is None or response.ok or response.streaming
            or ex.endpoint != NATIVE_ENDPOINT):  # an async job's stored answer: as it is
        return None
    native = surface.relaxed(call, response.status, error_message(response))
    if native is None:
        return None
    headers = ex.notes[_SENT]
    again = Exchange(surface=ex.surface, endpoint=ex.endpoint, method=ex.method,
                     path=ex.path, query=ex.query, headers=dict(headers), body=b"",
                     request_id=ex.request_id, client_addr=ex.client_addr, api=ex.api)
    again.notes[_CALL], again.notes[_SENT] = replace(call, native=native), headers
    again.replace_payload(native)
    ex.response = response
    ex.close()
    return again


def finish(ex: Exchange, response: Response) -> None:
    """Turn `response` (native, or an error in any shape) into the client's answer, in
    place."""
    surface = adapter_for(ex.api)
    assert surface is not None
    call: Call | None = ex.notes.get(_CALL)
    if not response.ok or call is None:
        _error(surface, response)
    elif response.status == ACCEPTED:
        pass  # an async job that waits or runs (`bridge.async_jobs`)
    elif response.streaming:
        translator = ex.notes[_TRANSLATOR] = surface.translator(call)
        response.map_frames(partial(_frames, ex, translator), keeps_marks=True)
        response.codec = streaming.SSE
        response.headers["content-type"] = streaming.CONTENT_TYPES[streaming.SSE]
        response.headers["cache-control"] = "no-cache"
    else:
        native = response.json()
        if isinstance(native, dict) and "error" not in native:
            response.set_body(encode_json(surface.body(native, call)) + b"\n")
            response.headers["content-type"] = JSON
        else:  # not a native answer: an error some stage made with a 2xx
            _error(surface, response, 502)
    if response.replayable is not None and call is not None:  # a repeat: its own ids
        revisit = response.replayable.revisit
        if call.remember is not None:  # and only while its record names its answer
            revisit = partial(_revisit, revisit, call.current) if call.current else None
        response.replayable = None if revisit is None else Replayable(
            revisit, partial(_restamper, call.ids))


def _revisit(revisit: Callable[[], float | None], current: Callable[[], bool]
             ) -> float | None:
    return revisit() if current() else None


def _error(surface: Surface, response: Response, status: int | None = None) -> None:
    status = status or response.status
    message = error_message(response)
    response.close()  # an error that came as a stream: nothing of it goes out
    response.frames, response.codec, response.status = None, None, status
    response.set_body(encode_json(surface.error(status, message, **error_detail(response)))
                      + b"\n")
    response.headers["content-type"] = JSON


def error_message(response: Response) -> str:
    """The message of an error in any shape the pipeline or an upstream writes it
    (`{"error": "…"}`, `{"error": {"message": "…"}}`, plain text)."""
    error = error_text(response.json()) if not response.streaming else ""
    if error:
        return error
    text = response.body.decode("utf-8", "replace").strip() if not response.streaming else ""
    return text or f"the request failed with status {response.status}"


def error_detail(response: Response) -> dict[str, str | None]:
    """The `param` and `code` of an error: the bridge's own (`Response.detail`), or an
    OpenAI-shaped body's."""
    if response.detail is not None:
        return response.detail
    data = response.json() if not response.streaming else None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return {}
    return {name: error[name] for name in ("param", "code") if isinstance(error.get(name), str)}


def _frames(ex: Exchange, translator: Translator, native: Iterator[Frame]) -> Iterator[Frame]:
    """The client's events for each native frame, marked as the native frame was (the
    events of one frame go out in one write with those after it in the same read)."""
    with owned(native) as frames:
        try:
            for frame in frames:
                if not frame.raw:  # `streaming.flush()`: the headers go out now
                    yield frame
                    continue
                data = frame.data
                if not isinstance(data, dict):
                    continue
                error = data.get("error")
                if error is not None:
                    message = error.get("message") if isinstance(error, dict) else error
                    out = translator.failed(500, str(message))
                else:
                    out = translator.frame(data)
                    if not out and _empty(data):  # the think filter's sign of life
                        out = [Frame(b": keep-alive", verbatim=True)]
                if out:
                    for event in out[:-1]:
                        event.more = True
                    out[-1].more = frame.more
                    yield from out
        except Exception as exc:  # noqa: BLE001 - contained: this stream ends with an error
            log.error("translating a stream failed [%s]", ex.request_id, exc_info=exc)
            events.emit("stage.failed", stage="surfaces", phase="frames")
            if ex.response is not None:
                ex.response.outcome = "truncated"
            yield from translator.failed(500, "internal error in the bridge; the stream was "
                                         f"cut (request id {ex.request_id})")


def _empty(native: dict) -> bool:
    """Whether a native chat frame says nothing at all (what the think filter sends while
    it hides reasoning): an SSE comment goes out for it, which clients skip and proxies
    count as the stream being alive."""
    return native.get("done") is False and native.get("message") == {"role": "assistant",
                                                                      "content": ""}


def stop_frames(ex: Exchange, message: str) -> list[Frame] | None:
    """The events that end a translated stream the bridge cuts as it stops; None when the
    exchange's stream is not a translated one."""
    translator: Translator | None = ex.notes.get(_TRANSLATOR)
    return translator.failed(503, message) if translator is not None else None


def _restamper(ids: list[str], sent: bytes) -> Callable[[], bytes]:
    """What makes `sent` again with fresh identities in place of `ids` (random tokens:
    found only where they were put; a raw NUL byte, which JSON never holds, marks each)."""
    template = sent
    for index, ident in enumerate(ids):
        template = template.replace(ident.encode(), b"\x00%d\x00" % index)

    def stamp() -> bytes:
        body = template
        for index, ident in enumerate(ids):
            body = body.replace(b"\x00%d\x00" % index, fresh(ident).encode())
        return body

    return stamp

