"""The glue between Flask and the pipeline: request → `Exchange`, `Response` → Flask.

Routes of every API surface call `forward(surface, endpoint)`; this module reads the
request body (bounded in size and in time), checks the body of model requests (a JSON
object, not nested absurdly deep, valid Unicode), runs the pipeline and relays the
answer, streaming frame by frame without buffering. Whatever a client sends, a refusal
is a 4xx in the surface's error shape, never a 500.
"""

from __future__ import annotations

import logging
import socket
from functools import partial
from typing import Callable, Iterator

import flask
import gevent
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected, MethodNotAllowed

from bridge.core import streaming
from bridge.core.errors import (
    BadRequest,
    BridgeError,
    PayloadTooLarge,
    RequestTimeout,
    error_response,
)
from bridge.core.exchange import MODEL_ENDPOINTS, Exchange, Response, owned, request_id
from bridge.core.json_body import parse_object
from bridge.core.pipeline import Pipeline
from bridge.surfaces import api_of, edge

log = logging.getLogger("bridge.proxy")


class UnreadableBody(Exception):
    """The request body could not be read to its end (malformed chunking, too slow, the
    client gone): refused with `error`, and the connection closed after the answer, since
    it cannot carry another request."""

    def __init__(self, error: BridgeError, rid: str):
        super().__init__(error.message)
        self.error, self.request_id = error, rid


# WSGI environ keys: the body read before Flask (`bridge.web.fast_hits`), or why it could
# not be read; the request's exchange, for the same module to look at once answered.
PREREAD = "bridge.preread"
EXCHANGE = "bridge.exchange"


def build_exchange(surface: str, endpoint: str, body_timeout: float, api: str = "") -> Exchange:
    request = flask.request._get_current_object()  # type: ignore[attr-defined]
    environ = request.environ
    headers = request_headers(environ)
    preread = environ.pop(PREREAD, None)
    if isinstance(preread, UnreadableBody):
        raise preread
    rid = request_id(headers)
    ex = Exchange(
        surface=surface, endpoint=endpoint, method=request.method, path=request.path,
        query=environ.get("QUERY_STRING", ""), headers=headers,
        body=preread if preread is not None else read_body(request, body_timeout, rid),
        request_id=rid, client_addr=request.remote_addr or "",
        raw_path=environ.get("RAW_URI", "").partition("?")[0], api=api)
    environ[EXCHANGE] = ex
    if endpoint in MODEL_ENDPOINTS:
        ex.payload = parse_object(ex.body)
        if edge.translated(ex):
            edge.begin(ex)
    return ex


_BODY_HEADERS = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}


def request_headers(environ: dict) -> dict[str, str]:
    """The request's headers with lower-case names, read from the WSGI environ the way
    werkzeug's `EnvironHeaders` reads them, without building that object."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                headers[key[5:].replace("_", "-").lower()] = value
        elif key in _BODY_HEADERS and value:
            headers[_BODY_HEADERS[key]] = value
    return headers


def read_body(request: flask.Request, timeout: float, rid: str) -> bytes:
    """The request body, refused with a 413 when over `--max-body-size`, and with an
    `UnreadableBody` when it does not arrive whole within `timeout` seconds
    (`--body-read-timeout`: 408), is malformed (chunking: 400) or the client hangs up
    while sending it (400, to nobody: logged as one INFO line)."""
    return read_within(timeout, rid, partial(_read_body, request))


def read_declared(environ: dict, length: int, timeout: float, rid: str) -> bytes:
    """A body of a declared `length` (within the size limit), read as `read_body` does."""
    return read_within(timeout, rid, partial(_read_length, environ, length))


def _read_length(environ: dict, length: int) -> bytes:
    body = environ["wsgi.input"].read(length) if length else b""
    if len(body) < length:
        raise _ClientLeft()
    return body


def read_within(timeout: float, rid: str, read: Callable[[], bytes]) -> bytes:
    timer = gevent.Timeout(timeout)
    try:
        with timer:
            return read()
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise UnreadableBody(RequestTimeout(
            f"the request body did not arrive within {timeout:g}s (--body-read-timeout)"
        ), rid) from None
    except ParseException as exc:
        raise UnreadableBody(BadRequest(f"malformed chunked request body: {exc}"), rid) from None
    except (OSError, ClientDisconnected, _ClientLeft):  # gunicorn's NoMoreData is an OSError
        log.info("client hung up while sending the request body [%s]", rid)
        raise UnreadableBody(BadRequest("the request body ended early: the client hung up "
                                        "while sending it"), rid) from None


class _ClientLeft(Exception):
    """The input ended before the declared Content-Length."""


def _read_body(request: flask.Request) -> bytes:
    # A body with a declared Content-Length is read straight from the input stream (as
    # werkzeug would, after the same check against the limit). Werkzeug silently cuts a
    # chunked body at the limit, so a chunked body is read up to one byte past it here.
    limit = request.max_content_length
    environ = request.environ
    declared = environ.get("CONTENT_LENGTH", "")
    if declared.isdigit() and "HTTP_TRANSFER_ENCODING" not in environ:
        length = int(declared)
        if limit is not None and length > limit:
            raise PayloadTooLarge(too_large_message(limit))
        return _read_length(environ, length)
    if (limit is not None and request.content_length is None
            and environ.get("wsgi.input_terminated")):
        body = environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(too_large_message(limit))
        return body
    return request.get_data(cache=False)


def too_large_message(limit: int | None) -> str:
    return f"request body is larger than the limit of {limit} bytes (--max-body-size)"


def bare_exchange(surface: str, endpoint: str = "other", rid: str | None = None) -> Exchange:
    """An exchange for a request refused before it could be read (bad body, no route);
    its refusal goes out in the shape of the API its path belongs to."""
    request = flask.request
    if rid is None:
        rid = request_id({"x-request-id": request.headers.get("x-request-id", "")})
    return Exchange(surface=surface, endpoint=endpoint, method=request.method,
                    path=request.path, query="", headers={}, body=b"", request_id=rid,
                    api=api_of(request.path) or surface)


def forward(surface: str, endpoint: str, api: str = "") -> flask.Response:
    """Answer the request with the pipeline; `api`: the client API of a path served by
    translation (`bridge.surfaces`), whose exchange goes on `surface`'s wire."""
    app = flask.current_app
    pipeline: Pipeline = app.extensions["bridge.pipeline"]
    timeout = app.extensions["bridge.settings"].body_read_timeout / 1000
    try:
        ex = build_exchange(surface, endpoint, timeout, api)
    except UnreadableBody as unreadable:
        result = to_flask(bare_exchange(surface, endpoint, unreadable.request_id),
                          error_response(surface, unreadable.error))
        result.call_on_close(partial(hang_up, flask.request.environ))
        return result
    except BridgeError as err:
        return to_flask(bare_exchange(surface, endpoint), error_response(surface, err))
    response = pipeline.handle(ex)
    again = edge.relaxed(ex, response) if edge.translated(ex) else None
    if again is not None:  # what the native chat refused, relaxed as the client's API does
        ex = flask.request.environ[EXCHANGE] = again
        response = pipeline.handle(ex)
    return to_flask(ex, response)


def hang_up(environ: dict) -> None:
    """Close the client's connection once the answer is sent: what is left of a body we
    could not read would otherwise be taken for the next request on it."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone


def forward_other(surface: str, rest: str, known: dict[str, list[str]]) -> flask.Response:
    """Forward any other path unchanged; a known path with the wrong method is a 405."""
    if rest in known:
        raise MethodNotAllowed(valid_methods=known[rest])
    return forward(surface, "other")


def to_flask(ex: Exchange, response: Response) -> flask.Response:
    if ex.response is None:
        ex.response = response
    response.finish()  # done by the pipeline already; a template must never go out as is
    if edge.translated(ex):
        edge.finish(ex, response)  # in the client's API's shape, errors included
    headers = dict(response.headers)
    headers["x-request-id"] = ex.request_id
    if response.streaming:
        headers["x-accel-buffering"] = "no"  # nginx in front: relay each chunk at once
        # not direct_passthrough: werkzeug then returns the stream without the iterator
        # that runs `call_on_close` callbacks, and `ex.close` would never run for streams
        result = flask.Response(_relay(ex, response), status=response.status, headers=headers)
        # closed even when the relay never started (its `owned` then never ran)
        result.call_on_close(response.close)
    else:
        result = flask.Response(response.body, status=response.status, headers=headers)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("-> %s %s%s [%s]", ex.method, ex.path, f"?{ex.query}" if ex.query else "",
                  ex.request_id)
        ex.on_close(_trace_end)
    result.call_on_close(ex.close)
    return result


def _trace_end(ex: Exchange) -> None:
    response = ex.response
    status = response.status if response is not None else "-"
    outcome = f" stream {response.outcome}" if response is not None and response.streaming else ""
    log.debug("<- %s%s after %.1f ms, %d upstream attempt(s) [%s]", status, outcome,
              ex.elapsed * 1000, ex.upstream_attempts, ex.request_id)


def _relay(ex: Exchange, response: Response) -> Iterator[bytes]:
    """The stream as it goes out: each frame as soon as it is there, except that frames
    that came in one upstream read (`Frame.more`) go out in one write: one system call
    and one TCP segment where a frame each would cost as many."""
    assert response.frames is not None and response.codec is not None
    codec = response.codec
    encode = streaming.encode
    held: list[bytes] = []  # frames of one read, until its last
    try:
        with owned(response.frames) as frames:  # a client hanging up closes the upstream
            if response.ready:  # a replay: one write instead of one per frame
                yield b"".join([encode(frame, codec) for frame in frames])
                return
            for frame in frames:
                held.append(encode(frame, codec))
                if not frame.more:
                    yield held[0] if len(held) == 1 else b"".join(held)
                    held.clear()
            if held:  # only a stage breaking its promise (`map_frames`) leaves any
                yield b"".join(held)
    except gevent.GreenletExit:
        # The worker is stopping and this stream outlived the graceful timeout (or the
        # stop was a quick one): end it with an error the client can see, not a cut.
        response.outcome = "stopped"
        if held:
            yield b"".join(held)
        log.warning("stream cut: the bridge is stopping (its graceful timeout ran out, or "
                    "a quick stop) [%s]", ex.request_id)
        if codec != streaming.RAW:
            message = "the bridge is stopping; the stream was cut before its end"
            ending = edge.stop_frames(ex, message) or [
                streaming.error_frame(ex.surface, message, "server_shutting_down")]
            yield b"".join(streaming.encode(frame, codec) for frame in ending)
