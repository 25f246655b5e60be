"""The glue between Flask and the pipeline: request → `Exchange`, `Response` → Flask.

Routes of every API surface call `forward(surface, endpoint)`; this module checks the
body of model requests (JSON object, size), runs the pipeline and relays the answer,
streaming frame by frame without buffering.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Iterator

import flask
from werkzeug.exceptions import MethodNotAllowed

from bridge.core import streaming
from bridge.core.errors import BadRequest, BridgeError, PayloadTooLarge, error_response
from bridge.core.exchange import MODEL_ENDPOINTS, Exchange, Response
from bridge.core.pipeline import Pipeline

log = logging.getLogger("bridge.proxy")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id(headers: dict[str, str]) -> str:
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else os.urandom(16).hex()  # 32 hex digits


def build_exchange(surface: str, endpoint: str) -> Exchange:
    request = flask.request._get_current_object()  # type: ignore[attr-defined]
    environ = request.environ
    headers = request_headers(environ)
    ex = Exchange(
        surface=surface, endpoint=endpoint, method=request.method, path=request.path,
        query=environ.get("QUERY_STRING", ""), headers=headers,
        body=read_body(request), request_id=request_id(headers),
        client_addr=request.remote_addr or "",
        raw_path=environ.get("RAW_URI", "").partition("?")[0])
    if endpoint in MODEL_ENDPOINTS:
        ex.payload = parse_model_request(ex.body)
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


def read_body(request: flask.Request) -> bytes:
    """The request body, refused with a 413 when over `--max-body-size`.

    A body with a declared Content-Length is read straight from the input stream (as
    werkzeug would, after the same check against the limit). Werkzeug silently cuts a
    chunked body at the limit, so a chunked body is read up to one byte past it here.
    """
    limit = request.max_content_length
    environ = request.environ
    declared = environ.get("CONTENT_LENGTH", "")
    if declared.isdigit() and "HTTP_TRANSFER_ENCODING" not in environ:
        length = int(declared)
        if limit is not None and length > limit:
            raise PayloadTooLarge(too_large_message(limit))
        return environ["wsgi.input"].read(length) if length else b""
    if (limit is not None and request.content_length is None
            and environ.get("wsgi.input_terminated")):
        body = environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(too_large_message(limit))
        return body
    return request.get_data(cache=False)


def too_large_message(limit: int | None) -> str:
    return f"request body is larger than the limit of {limit} bytes (--max-body-size)"


def parse_model_request(body: bytes) -> dict:
    if not body.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    return payload


def bare_exchange(surface: str, endpoint: str = "other") -> Exchange:
    """An exchange for a request refused before it could be read (bad body, no route)."""
    request = flask.request
    return Exchange(surface=surface, endpoint=endpoint, method=request.method,
                    path=request.path, query="", headers={}, body=b"",
                    request_id=request_id({"x-request-id": request.headers.get("x-request-id",
                                                                               "")}))


def forward(surface: str, endpoint: str) -> flask.Response:
    pipeline: Pipeline = flask.current_app.extensions["bridge.pipeline"]
    try:
        ex = build_exchange(surface, endpoint)
    except BridgeError as err:
        return to_flask(bare_exchange(surface, endpoint), error_response(surface, err))
    return to_flask(ex, pipeline.handle(ex))


def forward_other(surface: str, rest: str, known: dict[str, list[str]]) -> flask.Response:
    """Forward any other path unchanged; a known path with the wrong method is a 405."""
    if rest in known:
        raise MethodNotAllowed(valid_methods=known[rest])
    return forward(surface, "other")


def to_flask(ex: Exchange, response: Response) -> flask.Response:
    if ex.response is None:
        ex.response = response
    response.finish()  # done by the pipeline already; a template must never go out as is
    headers = dict(response.headers)
    headers["x-request-id"] = ex.request_id
    if response.streaming:
        headers["x-accel-buffering"] = "no"  # nginx in front: relay each chunk at once
        # not direct_passthrough: werkzeug then returns the stream without the iterator
        # that runs `call_on_close` callbacks, and `ex.close` would never run for streams
        result = flask.Response(_relay(response), status=response.status, headers=headers)
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


def _relay(response: Response) -> Iterator[bytes]:
    assert response.frames is not None and response.codec is not None
    with streaming.owned(response.frames) as frames:  # a client hanging up closes the upstream
        for frame in frames:
            yield streaming.encode(frame, response.codec)
