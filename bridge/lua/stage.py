"""The Lua middleware stage: `HandleServerRequest` on every request, before the key
checks, the cache and the upstream see it; `HandleServerResponse` on every response the
client gets (upstream answers, cache hits, refusals and errors, after the think filter).

Streams stay incremental: the response hook sees the status and headers before the first
byte (`body = nil`, `stream = true`), and `HandleStreamChunk(chunk, format)`, when the
script defines it, sees each chunk's payload (an SSE `data:` payload or an NDJSON line,
`format` "sse" or "ndjson") and returns it, changed or not, or nil to drop it.

A Lua error costs its request a 500 carrying the Lua message (one log line), a call over
`--luajit-timeout` a 504; either way the runtime goes back to the pool and the next
request is served as usual.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Iterator

from bridge.core import json_body, streaming
from bridge.core.errors import BadRequest, BridgeError, NotFound
from bridge.core.events import emit
from bridge.core.exchange import MODEL_ENDPOINTS, UNROUTED, Exchange, Frame, Response
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings
from bridge.lua.runtime import LuaFailure, LuaTimeout, Pool, Runtime, script_config
from bridge.tracing import spans

log = logging.getLogger("bridge.lua")

REQUEST, RESPONSE, CHUNK = "HandleServerRequest", "HandleServerResponse", "HandleStreamChunk"
_FAILED = "lua.failed"  # ex.notes: a hook of this exchange failed; no further hook runs
# Framing the bridge computes itself; a script's value would contradict the body it sends.
_NOT_FROM_SCRIPT = frozenset({"content-length", "transfer-encoding", "connection"})


class LuaError(BridgeError):
    status = 500
    type = "api_error"
    code = "lua_error"


class LuaTimedOut(BridgeError):
    status = 504
    type = "api_error"
    code = "lua_timeout"


def make_stage(settings: Settings, context: Context) -> Stage | None:
    return LuaStage(settings) if settings.enable_luajit else None


def _print(text: str, request_id: str) -> None:
    log.info("print: %s [%s]", text, request_id or "-")


# Header names and values and the query cross into Lua and back byte for byte: WSGI gives
# them as latin-1 text (one character per byte) and that is how they go on, to the
# upstream or the client, so a UTF-8 value or a stray 0xff byte arrives unchanged. The
# path is text already decoded (as UTF-8) by Flask.
WIRE = "latin-1"
# RFC 9110 field names; values may hold anything but line breaks and NUL (a header with
# those would be refused by http.client or gunicorn: a 500 instead of a clear error).
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_NOT_IN_VALUE = re.compile(r"[\r\n\0]")


def _to_lua(headers: dict[str, str]) -> dict[bytes, bytes]:
    return {name.encode(WIRE, "replace"): value.encode(WIRE, "replace")
            for name, value in headers.items()}


def _text(value: Any, what: str, encoding: str = "utf-8") -> str:
    if isinstance(value, bytes):
        return value.decode(encoding, "replace")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    raise ValueError(f"{what} must be a string, not {type(value).__name__}")


def _header(name: Any, value: Any) -> tuple[str, str]:
    name, value = _text(name, "a header name", WIRE).lower(), _text(value, "a header value", WIRE)
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if _NOT_IN_VALUE.search(value):
        raise ValueError(f"the value of {name!r} holds a line break or NUL")
    return name, value


def _headers(table: Any, hook: str) -> dict[str, str]:
    """A Lua table of headers as a dict with lower-case names (nil: no headers)."""
    if table is None:
        return {}
    try:
        return dict(_header(name, value) for name, value in table.items())
    except (AttributeError, ValueError) as exc:
        raise LuaFailure(hook, f"bad headers: {exc}") from None


def _body(value: Any, hook: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    raise LuaFailure(hook, f"body must be a string or nil, not {type(value).__name__}")


def _status(value: Any, hook: str) -> int:
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and float(value).is_integer() and 100 <= value <= 599):
        return int(value)
    raise LuaFailure(hook, f"status_code must be a whole number 100-599, not {value!r}")


class LuaStage(Stage):
    name = "lua"

    def __init__(self, settings: Settings):
        self.budget = settings.luajit_timeout / 1000
        self.pool = Pool(script_config(settings), 2 ** settings.luajit_instances_power, _print)

    def start(self) -> None:
        self.pool.start()

    # --- request --------------------------------------------------------------------

    def on_request(self, ex: Exchange) -> None:
        def hook(runtime: Runtime) -> tuple:
            result = runtime.request_hook(
                ex.path.encode(), ex.method.encode(), ex.query.encode(WIRE, "replace"), ex.body,
                runtime.lua.table_from(_to_lua(ex.headers)))
            go_on, path, method, query, body, headers = result
            if not go_on:
                return False, _status(path, REQUEST), _headers(headers, REQUEST), \
                    _body(body, REQUEST)
            try:
                return True, (_text(path, "path"), _text(method, "method").upper(),
                              _text(query or b"", "query", WIRE)), _headers(headers, REQUEST), \
                    _body(body, REQUEST)
            except ValueError as exc:
                raise LuaFailure(REQUEST, str(exc)) from None

        go_on, first, headers, body = self._call(REQUEST, ex, hook)
        if not go_on:
            headers = {name: value for name, value in headers.items()
                       if name not in _NOT_FROM_SCRIPT}
            ex.response = Response(status=first, headers=headers, body=body)
            return
        ex.path, ex.method, ex.query = first
        ex.headers = headers
        if body != ex.body:
            self._rewrite_body(ex, body)
        if ex.endpoint == UNROUTED:
            raise NotFound(f"no route for {ex.path}")

    def _rewrite_body(self, ex: Exchange, body: bytes) -> None:
        """The script's body is what the cache keys and the upstream receives."""
        ex.body = body
        if ex.endpoint in MODEL_ENDPOINTS:
            try:  # the same checks as a client's body: depth, constants, lone surrogates
                payload = json_body.parse_object(body)
            except BadRequest as exc:
                self._fail(ex, LuaFailure(REQUEST, "the rewritten body of a model request "
                                                   f"is not usable: {exc.message}"))
            ex.payload = payload

    # --- response -------------------------------------------------------------------

    def on_response(self, ex: Exchange) -> None:
        if ex.notes.get(_FAILED):
            return  # its own failure: the script is not asked to dress it
        response = ex.response
        assert response is not None
        response.finish()  # the body as the client would get it, not a cache template
        stream = response.streaming

        def hook(runtime: Runtime) -> tuple:
            status, headers, body = runtime.response_hook(
                response.status, runtime.lua.table_from(_to_lua(response.headers)),
                None if stream else response.body, stream)
            return (_status(status, RESPONSE), _headers(headers, RESPONSE),
                    None if body is None and stream else _body(body, RESPONSE),
                    runtime.chunk_hook is not None)

        status, headers, body, has_chunk_hook = self._call(RESPONSE, ex, hook)
        response.status = status
        response.headers = {name: value for name, value in headers.items()
                            if name not in _NOT_FROM_SCRIPT}
        if stream and body is not None:  # the script answered the stream with a body
            close = getattr(response.frames, "close", None)
            if close is not None:
                close()
            response.frames = response.codec = None
            response.set_body(body)
        elif not stream:
            if body != response.body:
                response.set_body(body)
        elif has_chunk_hook:
            codec = response.codec or streaming.RAW
            response.map_frames(lambda frames: self._chunks(ex, frames, codec))

    def _chunks(self, ex: Exchange, frames: Iterator[Frame], codec: str) -> Iterator[Frame]:
        format_name = codec.encode()
        for frame in frames:
            if not frame.raw:  # `streaming.flush()`: no chunk to show the script
                yield frame
                continue

            def hook(runtime: Runtime, raw: bytes = frame.raw) -> Any:
                assert runtime.chunk_hook is not None
                result = runtime.chunk_hook(raw, format_name)
                if result is None or isinstance(result, bytes):
                    return result
                raise LuaFailure(CHUNK, "must return a string or nil, not "
                                        f"{type(result).__name__}")

            try:
                raw = self._call(CHUNK, ex, hook)
            except BridgeError as err:  # the status is sent: end the stream in-band
                if ex.response is not None:
                    ex.response.outcome = "truncated"
                yield streaming.error_frame(ex.surface, err.message, code=err.code or "")
                return
            if raw is None:
                continue
            yield frame if raw == frame.raw else Frame(raw, verbatim=frame.verbatim)

    # --- calls ----------------------------------------------------------------------

    def _call(self, hook_name: str, ex: Exchange, hook: Any) -> Any:
        """One hook call within the budget; failures become this request's error."""
        started = time.perf_counter()
        emit("lua.call", hook=hook_name)
        try:
            with spans.child(ex, f"lua {hook_name}", {"bridge.lua.hook": hook_name}):
                return self.pool.call(hook_name, self.budget, ex.request_id, hook)
        except (LuaFailure, LuaTimeout) as exc:
            self._fail(ex, exc)
        finally:
            emit("lua.duration", time.perf_counter() - started, hook=hook_name)

    def _fail(self, ex: Exchange, exc: LuaFailure | LuaTimeout) -> None:
        ex.notes[_FAILED] = True
        if isinstance(exc, LuaTimeout):
            log.warning("lua: %s [%s]", exc, ex.request_id)
            emit("lua.timeout", hook=exc.hook)
            raise LuaTimedOut(f"the Lua middleware's {exc} (request id {ex.request_id})")
        log.error("lua: %s failed: %s [%s]", exc.hook, exc.message, ex.request_id)
        emit("lua.error", hook=exc.hook)
        raise LuaError(f"the Lua middleware failed in {exc.hook}: {exc.message}")
