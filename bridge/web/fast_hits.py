"""Repeats of a memory hit answered before Flask: a cache hit at the ceiling of the stack.

A hit in a worker's memory tier costs the cache a few microseconds; Flask's request
handling and the pipeline around it cost many times that. So when the pipeline's answer
is `Replayable` (the cache answered from this worker's memory tier), this WSGI layer
keeps the bytes that went out, as every stage left them, under the request as it came
(path, query, body, credential headers): the same credentials are the same principal,
which the cache found entitled to this answer (`bridge.identity`). An identical request
within `MEMO_SECONDS` is answered from there once the cache says the entry is still
current (which counts as a lookup: LRU order, hot tracking), with its own identity (id,
created), request id and Age, and the same access line and events (metrics, console) as
the first one: the events of all repeats answered in one turn of the event loop are
emitted once at its end, with their values added up (they only feed counters:
`events.additive`). Everything else goes through Flask: other paths and methods,
requests with Cache-Control or Pragma, bodies of unknown or larger size, the first
request of each MEMO_SECONDS, and any answer that was not such a hit.

It is installed only where no stage in front of the cache treats each request on its
own (`applies`): not with Lua middleware, shared mode (keys, quotas, revocation),
routing (`--upstreams`), `-d` tracing or OpenTelemetry traces (a span per request).
What could change an identical request's answer in another way than the entry (a
worker learning that the upstream now refuses a principal, the think filter learning
about a model) is seen within MEMO_SECONDS.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import gevent

from bridge import surfaces
from bridge.console.recent import keeps_requests
from bridge.core import events
from bridge.core.exchange import Exchange, request_id
from bridge.core.redaction import CREDENTIAL_HEADERS
from bridge.core.settings import Settings
from bridge.observability.stage import record
from bridge.tracing import switch as tracing
from bridge.web.proxy import EXCHANGE, PREREAD, UnreadableBody, read_declared
from bridge.web.routes import ollama_api, openai_api

MEMO_SECONDS = 1.0      # how long an answer is repeated before the pipeline answers again
MEMO_ANSWERS = 512      # answers kept per worker (least recently used dropped) ...
MEMO_BYTES = 8 << 20    # ... and their bytes (beside the memory tier's own budget)
BODY_LIMIT = 16 * 1024  # larger requests always go through Flask
ANSWER_LIMIT = 1 << 20  # larger answers are not kept
FINISHED = "request.finished"  # emitted per request with its own duration, never repeated
PER_RESPONSE = frozenset({"x-request-id", "age", "content-length"})
PATHS = frozenset([*(prefix + path for prefix, routes in (("/v1", openai_api.ROUTES),
                                                         ("/api", ollama_api.ROUTES))
                     for method, path, _ in routes if method == "POST"),
                   # the translated APIs: their answers restamped with their own ids
                   *(path for method, path, _ in surfaces.ROUTES if method == "POST")])
_CREDENTIALS = tuple("HTTP_" + name.upper().replace("-", "_") for name in CREDENTIAL_HEADERS)


def applies(settings: Settings) -> bool:
    """Whether identical requests may be answered without the stages in front of the
    cache: only where each of them would treat them alike."""
    return bool(settings.enable_cache and not settings.enable_luajit
                and not settings.enable_shared_mode and not settings.upstreams
                and not settings.debug and not tracing.enabled(settings))


@dataclass
class _Answer:
    """One kept answer and what its repeats need."""

    made: float  # monotonic time of the pipeline's answer
    revisit: Callable[[], float | None]
    body: Callable[[], bytes]  # the bytes with a fresh identity
    status: str
    headers: list[tuple[str, str]]  # those every repeat sends alike
    events: list[events.Event]  # what the pipeline emitted for it, but `FINISHED`
    route: str
    ex: Exchange  # the first request's: the access line's fields
    size: int  # bytes held: the answer, the request, the first exchange's copies
    pending: int = 0  # repeats whose events are not emitted yet


class FastHits:
    """WSGI middleware around the Flask app (see the module's docstring)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], settings: Settings):
        self.app = app
        self.timeout = settings.body_read_timeout / 1000
        self.body_limit = min(BODY_LIMIT, settings.max_body_size)
        self.request_log = keeps_requests(settings)
        self.answers: OrderedDict[tuple[Any, ...], _Answer] = OrderedDict()
        self.size = 0  # bytes of the kept answers
        self.unsaid: list[_Answer] = []  # answers with `pending` repeats

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        declared = environ.get("CONTENT_LENGTH", "")
        if (environ["REQUEST_METHOD"] != "POST" or environ.get("PATH_INFO") not in PATHS
                or "HTTP_CACHE_CONTROL" in environ or "HTTP_PRAGMA" in environ
                or "HTTP_TRANSFER_ENCODING" in environ or not declared.isdigit()
                or int(declared) > self.body_limit):
            return self.app(environ, start_response)
        started = time.perf_counter()
        rid = request_id({"x-request-id": environ.get("HTTP_X_REQUEST_ID", "")})
        try:
            body = read_declared(environ, int(declared), self.timeout, rid)
        except UnreadableBody as unreadable:  # answered in Flask, in the surface's shape
            environ[PREREAD] = unreadable
            return self.app(environ, start_response)
        key = (environ["PATH_INFO"], environ.get("QUERY_STRING", ""), body,
               *[environ.get(name) for name in _CREDENTIALS])
        answer = self.answers.get(key)
        if answer is not None:
            age = answer.revisit() if time.monotonic() - answer.made < MEMO_SECONDS else None
            if age is not None:
                self.answers.move_to_end(key)
                return self._repeat(answer, age, rid, environ, started, start_response)
            self._drop(key)
        environ[PREREAD] = body
        environ["wsgi.input"] = io.BytesIO(body)
        return self._through(key, environ, start_response)

    def _repeat(self, answer: _Answer, age: float, rid: str, environ: dict, started: float,
                start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = answer.body()
        start_response(answer.status, [*answer.headers, ("x-request-id", rid),
                                       ("age", str(int(age))),
                                       ("Content-Length", str(len(body)))])
        answer.pending += 1
        if answer.pending == 1:
            if not self.unsaid:
                gevent.get_hub().loop.run_callback(self._say)
            self.unsaid.append(answer)

        def finished() -> None:
            record(method="POST", path=environ["PATH_INFO"], route=answer.route, status=200,
                   remote=environ.get("REMOTE_ADDR", ""), request_id=rid, ex=answer.ex,
                   duration=time.perf_counter() - started, request_log=self.request_log)

        return _Sent([body], finished)

    def _keep(self, key: tuple[Any, ...], answer: _Answer) -> None:
        if key in self.answers:
            self._drop(key)
        self.answers[key] = answer
        self.size += answer.size
        while len(self.answers) > MEMO_ANSWERS or self.size > MEMO_BYTES:
            self._drop(next(iter(self.answers)))

    def _drop(self, key: tuple[Any, ...]) -> None:
        self.size -= self.answers.pop(key).size

    def _say(self) -> None:
        """Once per turn of the event loop: the events of the repeats answered in it, each
        once with its values times the number of repeats (they are all additive)."""
        unsaid, self.unsaid = self.unsaid, []
        for answer in unsaid:
            times, answer.pending = answer.pending, 0
            for name, value, labels in answer.events:
                events.emit(name, value * times, **labels)

    def _through(self, key: tuple[Any, ...], environ: dict,
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Through Flask, keeping the answer when it is a replayable one."""
        sent: list[Any] = []

        def keep_start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            sent[:] = [status, headers]
            return start_response(status, headers, *exc_info)

        recorded = events.record()
        try:
            result = self.app(environ, keep_start)
        except BaseException:
            events.stop_recording()
            raise
        ex: Exchange | None = environ.get(EXCHANGE)
        response = ex.response if ex is not None else None
        if (ex is None or response is None or response.replayable is None or not sent
                or not sent[0].startswith("200")):
            events.stop_recording()
            return result
        chunks: list[bytes] = []

        def finished(complete: bool) -> None:
            events.stop_recording()
            body = b"".join(chunks)
            ending = [event for event in recorded if event[0] == FINISHED]
            repeated = [event for event in recorded if event[0] != FINISHED]
            if not complete or len(body) > ANSWER_LIMIT or not ending or \
                    response.outcome not in (None, "complete") or \
                    not all(events.additive(name) for name, _, _ in repeated):
                return
            replayable = response.replayable
            assert replayable is not None and ex is not None
            self._keep(key, _Answer(
                made=time.monotonic(), revisit=replayable.revisit,
                body=replayable.restamper(body), status=sent[0],
                headers=[(name, value) for name, value in sent[1]
                         if name.lower() not in PER_RESPONSE],
                events=repeated, route=ending[-1][2].get("route", ""), ex=ex,
                size=2 * len(body) + 3 * len(key[2]) + 2048))

        return _Kept(result, chunks, finished)


class _Sent:
    """A repeated answer's body; `finished` runs when the server closes it (sent)."""

    def __init__(self, chunks: list[bytes], finished: Callable[[], None]):
        self.chunks, self.finished = chunks, finished

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.finished()


class _Kept:
    """The app's answer, passed on chunk by chunk and kept; `finished(complete)` runs
    after the app's own close (its access line and events)."""

    def __init__(self, result: Iterable[bytes], chunks: list[bytes],
                 finished: Callable[[bool], None]):
        self.result, self.chunks, self.finished = result, chunks, finished
        self.complete = False

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        for chunk in self.result:
            size += len(chunk)
            if size <= ANSWER_LIMIT:
                self.chunks.append(chunk)
            yield chunk
        self.complete = True

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.finished(self.complete)
