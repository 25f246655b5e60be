"""Observing every request: the access log line, request metrics, token usage, `-d` tracing.

`init_app(app, settings)` hooks Flask so that every request (model calls, `/health`, errors) gets
one access line and its request events when its response is closed, that is after the
last byte of a stream was sent or the client left: the duration includes the whole
stream. The pipeline stage (outermost) hands its exchange to that hook for the cache
status, upstream attempts and client key, counts prompt/completion tokens, and with `-d`
traces requests and responses (bodies clipped, credentials redacted).

Tokens are counted once per exchange, when it closes (`spent`, read alike by these
metrics, the request log, the usage ledger and traces): those the upstream reported for
its call (`Exchange.usage`, read where the upstream's frames are read, so usage the client
did not ask for and never sees still counts), source "upstream"; or, for an answer that
cost no upstream call (a cache hit, a follower of an identical call in flight), the usage
in what the client received, source "cache"; or, for an upstream answer that reported
none, an estimate (characters / 4, marked so; only the ledger keeps it).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Iterator, NamedTuple

import flask

from bridge.console.recent import keeps_requests
from bridge.core.errors import error_text
from bridge.core.events import emit
from bridge.core.exchange import Exchange, Frame, Usage, usage_in
from bridge.core.exchange import request_id as request_id_of
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings
from bridge.observability import logs
from bridge.surfaces import client_api

access_log = logging.getLogger(logs.ACCESS_LOGGER)
trace_log = logging.getLogger("bridge.trace")

_EXCHANGE = "bridge_exchange"  # flask.g attribute: the request's exchange
_STARTED = "bridge_started"
_RELAYED = "observe.relayed"  # ex.notes: the whole stream went to the client
_SERVED_USAGE = "observe.served_usage"  # ex.notes: usage in an answer no upstream call made
_RELAYED_FRAMES = "observe.relayed_frames"  # ex.notes: data frames of a stream relayed
_PROMPT, _ANSWER = "observe.prompt", "observe.answer"  # ex.notes: --request-log-bodies
UNMATCHED_ROUTE = "<unmatched>"
ACCESS_LINE = ("%s \"%s %s\" %d %.1fms cache=%s attempts=%d upstream=%s key=%s api=%s "
               "outcome=%s id=%s")
NOT_OBSERVED = frozenset({"/metrics", "/status", "/status/requests"})  # polled often
ERROR_MESSAGE_LIMIT = 300
TRACE_BODY_LIMIT = 2000
TRACE_FRAME_LIMIT = 300
REQUEST_LOG_BODY_LIMIT = 2000  # bytes of a prompt or an answer the request log keeps


# --- token usage ----------------------------------------------------------------------

ESTIMATED_CHARS_PER_TOKEN = 4  # of a request, or of a whole answer
# a streamed answer: one token per data frame (Ollama's and OpenAI-compatible streams send
# a frame per token; its bytes are mostly the frame's JSON, ~15 times its text)


class Spent(NamedTuple):
    """The usage of one exchange and where it came from: "upstream" (a call made for it)
    or "cache" (an answer that cost no upstream call); `estimated` when the upstream did
    not report it and it was guessed (characters / 4; a stream's frames)."""

    usage: Usage
    source: str
    estimated: bool = False


def client_key(ex: Exchange | None) -> str:
    """The NAME of the client's key (set by the auth stage in shared mode), or ""."""
    return (ex.client_key or "") if ex is not None else ""


def answered(ex: Exchange) -> bool:
    """A model request that got a successful answer (a name the upstream refused is the
    client's free text: nothing is counted by model for it)."""
    return ex.is_model_request and ex.response is not None and ex.response.ok


def spent(ex: Exchange) -> Spent | None:
    """The one reading of what an exchange used, once it is over (its closers run): what
    the upstream reported for its call; else, for an answer no upstream call made, the
    usage in what the client received; else, for an upstream answer without usage, an
    estimate from the characters asked and answered. None: nothing to count."""
    if ex.usage is not None:
        return Spent(ex.usage, "upstream")
    served: Usage | None = ex.notes.get(_SERVED_USAGE)
    if served is not None:
        return Spent(served, "cache")
    if ex.upstream_attempts and answered(ex):
        assert ex.response is not None
        answer = len(ex.response.body) // ESTIMATED_CHARS_PER_TOKEN \
            if not ex.response.streaming else ex.notes.get(_RELAYED_FRAMES, 0)
        return Spent(Usage(len(ex.body) // ESTIMATED_CHARS_PER_TOKEN, answer), "upstream",
                     estimated=True)
    return None


def count_tokens(ex: Exchange) -> None:
    """Emit the exchange's tokens (a closer: once, when the exchange is over)."""
    found = spent(ex)
    ok = answered(ex)
    if ok:
        emit("model.request", model=ex.model)
    if found is None or found.estimated:  # the metrics count reported tokens only
        return
    usage = found.usage
    if ok and usage.prompt + usage.completion:
        emit("model.tokens", usage.prompt + usage.completion, model=ex.model)
    labels = {"client_key": client_key(ex), "source": found.source}
    if usage.prompt:
        emit("tokens.prompt", usage.prompt, **labels)
    if usage.completion:
        emit("tokens.completion", usage.completion, **labels)


# --- the pipeline stage -----------------------------------------------------------------

class ObserveStage(Stage):
    name = "observe"

    def __init__(self, settings: Settings):
        self.trace = settings.debug
        self.bodies = settings.request_log_bodies and keeps_requests(settings)

    def on_request(self, ex: Exchange) -> None:
        if flask.has_request_context():
            setattr(flask.g, _EXCHANGE, ex)
        ex.on_close(count_tokens)
        if self.bodies:
            ex.notes[_PROMPT] = ex.body[:REQUEST_LOG_BODY_LIMIT]
        if self.trace:
            trace_log.debug("request %s %s headers=%s body=%s [%s]", ex.method, ex.path,
                            logs.safe_headers(ex.headers), logs.clip(ex.body, TRACE_BODY_LIMIT),
                            ex.request_id)

    def on_response(self, ex: Exchange) -> None:
        response = ex.response
        if response is None:
            return
        # an answer that cost no upstream call: its usage is read from what the client gets
        served = ex.upstream_attempts == 0 and ex.is_model_request and response.ok
        if response.streaming:
            response.map_frames(lambda frames: self._frames(ex, frames, served),
                                keeps_marks=True)  # passes every frame on
        elif served:
            ex.notes[_SERVED_USAGE] = usage_in(response.body)
        if self.trace:
            trace_log.debug("response %d headers=%s%s [%s]", response.status,
                            logs.safe_headers(response.headers),
                            " (stream)" if response.streaming
                            else " body=" + logs.clip(response.body, TRACE_BODY_LIMIT),
                            ex.request_id)

    def _frames(self, ex: Exchange, frames: Iterator[Frame], served: bool) -> Iterator[Frame]:
        relayed = 0
        looks = served or self.bodies or self.trace  # at more than the count (most: not)
        if self.bodies:
            ex.notes[_ANSWER] = b""
        try:
            for frame in frames:
                if not frame.verbatim:  # not a comment (a heartbeat)
                    relayed += 1
                if looks:
                    self._look(ex, frame, served)
                yield frame
            ex.notes[_RELAYED] = True
        finally:  # noted once, when the stream ends however it ends: not per frame
            ex.notes[_RELAYED_FRAMES] = relayed

    def _look(self, ex: Exchange, frame: Frame, served: bool) -> None:
        """What a frame on its way out tells: the request log's body, the usage of an
        answer that cost no upstream call, the debug trace."""
        if self.bodies and len(ex.notes[_ANSWER]) < REQUEST_LOG_BODY_LIMIT:
            ex.notes[_ANSWER] = (ex.notes[_ANSWER] + frame.raw)[:REQUEST_LOG_BODY_LIMIT]
        if served:
            ex.notes[_SERVED_USAGE] = usage_in(frame.raw) or ex.notes.get(_SERVED_USAGE)
        if self.trace:
            trace_log.debug("frame %s [%s]", logs.clip(frame.raw, TRACE_FRAME_LIMIT),
                            ex.request_id)


def make_stage(settings: Settings, context: Context) -> Stage | None:
    return ObserveStage(settings)


# --- the Flask hooks: one record per request, when its response is closed ---------------

def init_app(app: flask.Flask, settings: Settings) -> None:
    app.before_request(_start)
    app.after_request(partial(_on_close, request_log=keeps_requests(settings)))


def _start() -> None:
    setattr(flask.g, _STARTED, time.perf_counter())


def _on_close(response: flask.Response, request_log: bool) -> flask.Response:
    request = flask.request._get_current_object()  # type: ignore[attr-defined]
    if request.path in NOT_OBSERVED:
        return response
    g = flask.g._get_current_object()  # type: ignore[attr-defined]
    started = g.get(_STARTED, time.perf_counter())
    ex: Exchange | None = g.get(_EXCHANGE)
    rule = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
    method, path, status = request.method, request.path, response.status_code
    remote = request.remote_addr or ""
    request_id = response.headers.get("x-request-id", "")
    if not request_id:  # answered outside the pipeline (/health, /ready): an id all the same
        request_id = response.headers["x-request-id"] = request_id_of(request.headers)
    if status >= 400:
        emit("request.error", status=str(status), path=path, request_id=request_id,
             message=error_message(response))
    response.call_on_close(lambda: record(
        method=method, path=path, route=rule, status=status, remote=remote,
        duration=time.perf_counter() - started, request_id=request_id, ex=ex,
        request_log=request_log))
    return response


def error_message(response: flask.Response) -> str:
    """The message of an error answer in either surface's shape ("" for a stream or
    anything else): what the console lists, never the body itself."""
    if response.is_streamed:
        return ""
    return error_text(response.get_json(silent=True))[:ERROR_MESSAGE_LIMIT]


def record(*, method: str, path: str, route: str, status: int, remote: str, duration: float,
           request_id: str, ex: Exchange | None, request_log: bool) -> None:
    """The access line and request events of one finished request (with what the request
    log keeps of it when there is one)."""
    outcome = None
    if ex is not None and ex.response is not None:
        gone = (ex.response.streaming and not ex.notes.get(_RELAYED)
                and ex.response.outcome != "stopped")  # cut by the worker at stop
        outcome = "client_left" if gone else ex.response.outcome
    fields = {
        "remote": remote, "method": method, "path": path, "status": status,
        "duration_ms": round(duration * 1000, 1),
        "cache": (ex.cache_status if ex is not None else None) or "-",
        "upstream_attempts": ex.upstream_attempts if ex is not None else 0,
        "client_key": client_key(ex) or "-",
        "api": ex.api if ex is not None else (client_api(path) or "-"),
        "upstream": (ex.route.current.name if ex is not None and ex.route is not None
                     else None) or "-",
        "outcome": outcome or "-",
        "request_id": request_id,
    }
    if access_log.isEnabledFor(logging.INFO):
        # `info` without its search of the caller's frame (which no format shows): the
        # line costs a third less
        access_log.handle(access_log.makeRecord(
            access_log.name, logging.INFO, __file__, 0, ACCESS_LINE,
            (remote, method, path, status, fields["duration_ms"], fields["cache"],
             fields["upstream_attempts"], fields["upstream"], fields["client_key"],
             fields["api"], fields["outcome"], request_id), None, "record",
            {"fields": fields}))
    emit("request.finished", duration, route=route, method=method, status=str(status),
         client_key=client_key(ex), **(logged(ex, fields) if request_log else {}))


def logged(ex: Exchange | None, fields: dict) -> dict[str, str]:
    """What the console's request log keeps of a request beyond `request.finished`'s
    metric labels (its prompt and answer only with --request-log-bodies)."""
    api, upstream = fields["api"], fields["upstream"]
    if ex is None:
        return {"path": fields["path"], "request_id": fields["request_id"],
                "api": "" if api == "-" else api}
    found = {"path": fields["path"], "request_id": fields["request_id"], "api": api,
             "model": ex.model, "cache": ex.cache_status or "",
             "upstream": "" if upstream == "-" else upstream}
    used = spent(ex)
    if used is not None and not used.estimated:
        found["prompt_tokens"], found["completion_tokens"] = (str(used.usage.prompt),
                                                              str(used.usage.completion))
    if _PROMPT in ex.notes:  # --request-log-bodies
        response = ex.response
        answer = (ex.notes.get(_ANSWER, b"") if response is None or response.streaming
                  else response.body[:REQUEST_LOG_BODY_LIMIT])  # as sent: stamped
        found["prompt"] = ex.notes[_PROMPT].decode(errors="replace")
        found["answer"] = answer.decode(errors="replace")
    return found
