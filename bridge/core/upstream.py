"""The upstream client: the only code that calls Ollama or the OpenAI-compatible API, over
the transport of `bridge.core.transport` (pools, one-write requests, bodies read within a
deadline).

It owns the policy: the `-t` timeout (connect + response, and a deadline for streams)
with its shorter `--connect-timeout`, retries with exponential back-off and jitter
(`-a/-i/-m`, honouring `Retry-After`, the admission slot given back while waiting),
fail-over between routed upstreams, the mapping of transport failures to gateway errors
(502, 504), and the bridge's own questions to an upstream (`ask`, `readiness`). With
traces on, each attempt is a client span (`bridge.tracing.spans`) whose `traceparent`
goes upstream with it.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import time
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Iterator
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from opentelemetry.trace import Span, SpanKind

from bridge.core import events, streaming
from bridge.core.errors import BridgeError, UpstreamTimeout, UpstreamUnavailable
from bridge.core.exchange import (
    USAGE_MARKERS,
    Exchange,
    Frame,
    Response,
    Route,
    Stream,
    UpstreamTarget,
    encode_json,
    usage_in,
)
from bridge.core.redaction import CREDENTIAL_HEADERS, Redactor, bearer_token, split_query
from bridge.core.settings import Settings, upstream_key
from bridge.core.shared_state import SharedMemo
from bridge.core.transport import (
    Answer,
    BodyCut,
    BodyTimeout,
    ConnectTimeout,
    Transport,
    TransportError,
    is_timeout,
)
from bridge.surfaces import crossing
from bridge.surfaces.crossing import Crossing
from bridge.tracing import spans

log = logging.getLogger("bridge.upstream")

# 529: Claude's API is overloaded (`overloaded_error`), a 503 by another name
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})

# Connection-level headers (RFC 9110 7.6.1) and those the transport recomputes.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
NOT_FORWARDED_REQUEST = HOP_BY_HOP | {"host", "content-length", "accept-encoding"}
NOT_FORWARDED_RESPONSE = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}

# What `readiness()` finds: /ready's `status`
READY, NOT_REACHABLE = "ready", "upstream unreachable"
KEY_REFUSED = "upstream refuses the bridge's key (--api-key)"
# `/ready`'s probe of an upstream answers every `/ready` of the instance for a second:
# however often it is asked, an upstream gets at most one readiness probe a second
READY_PROBES = SharedMemo("ready-probes.json", max_age=1.0)


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with jitter, bounded by the minimum and maximum interval."""

    min_interval: float
    max_interval: float

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_interval)
        ceiling = min(self.max_interval, self.min_interval * 2 ** (retry - 1))
        # "equal jitter": never shorter than half the step, never below the minimum
        return max(self.min_interval, random.uniform(ceiling / 2, ceiling))


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def forwardable(headers: dict[str, str], excluded: frozenset[str]) -> dict[str, str]:
    """End-to-end headers only: hop-by-hop ones and those named in `Connection` are dropped."""
    named = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    return {name: value for name, value in headers.items()
            if name not in excluded and name not in named}


def upstream_path(ex: Exchange) -> str:
    """The path to call upstream: the client's own bytes (`%2F` stays `%2F`), unless a
    stage has rewritten `ex.path`."""
    if ex.raw_path and unquote(ex.raw_path) == ex.path:
        return ex.raw_path
    return quote(ex.path, safe="/:@!$&'()*+,;=-._~")


_VERSIONED = re.compile(r"/(v\d+[a-z0-9]*|openai)/?$")


def joined(base: str, kind: str, path: str) -> str:
    """The URL of `path` on an upstream at `base`. An OpenAI-compatible or Anthropic URL
    written as SDKs write base URLs, ending in its API's version (`…/v1`,
    `…/compatible-mode/v1`, Gemini's `…/v1beta/openai`), does not get the `/v1` of the
    bridge's paths again."""
    if kind != "ollama" and path.startswith("/v1/") and _VERSIONED.search(base):
        return base.rstrip("/") + path[3:]
    return base + path


def with_credentials(headers: dict[str, str], kind: str, key: str | None) -> dict[str, str]:
    """`headers` with the credential an upstream of `kind` gets: `key` when the bridge
    has one for it ("" none at all), else (None) the client's own, moved to the header
    that kind reads (`x-api-key` for Anthropic, a Bearer token for the others); an
    Ollama gets the client's headers as they came (an auth proxy may read any)."""
    if key is None:
        if kind == "ollama":
            return headers
        key = bearer_token(headers.get("authorization", "")) or headers.get("x-api-key", "")
    for name in CREDENTIAL_HEADERS:
        headers.pop(name, None)
    if key:
        headers.update(crossing.kind_of(kind).credentials(key))
    return headers


@dataclass(frozen=True)
class Leg:
    """One upstream's share of an exchange: the call as that upstream gets it (by
    translation, `crossing`, when it does not speak the exchange's wire)."""

    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float
    target: UpstreamTarget | None  # None: the configured upstream (-o), no route
    method: str = "POST"
    crossing: Crossing | None = None


def scrubber(leg: Leg) -> Redactor | None:
    """What takes the credentials a leg's request carried (the client's, or the bridge's
    own key) out of its answer, in case the upstream echoes them (some do, in errors and
    debug fields): what every stage after this sees, and so what the cache and async jobs
    keep, is what the client may be sent. None when it carried none long enough to be
    told from ordinary text (`redaction.MIN_SECRET_LENGTH`)."""
    secrets = [bearer_token(value) or value for name, value in leg.headers.items()
               if name in CREDENTIAL_HEADERS]
    if "?" in leg.url:
        secrets += [unquote_plus(part.partition("=")[2]) for part in
                    split_query(urlsplit(leg.url).query)[1].split("&") if part]
    secrets = [secret for secret in secrets if secret]
    return _redactor(tuple(secrets)) if secrets else None


@lru_cache(maxsize=256)
def _redactor(secrets: tuple[str, ...]) -> Redactor | None:
    """One `Redactor` per set of credentials, made once (a client sends the same key on
    every request); None when it would replace nothing."""
    redactor = Redactor(secrets)
    return redactor if redactor.longest else None


def scrubbed(response: Response, redactor: Redactor | None, frames: bool = True) -> Response:
    """`response` scrubbed by `redactor` (`scrubber`), if any; `frames` False: its frames
    are scrubbed where they are read, one by one (`UpstreamClient._frames`)."""
    if redactor is not None:
        redactor.response(response, frames)
    return response


class UpstreamClient:
    """Sends an exchange upstream and returns its `Response` (whole or streamed).

    `-t` bounds each upstream request as a whole: connecting, waiting for the headers
    and reading the body share one budget, so a stream that outlives it is cut with an
    in-band error and a log line, whatever the pace of its chunks. Connecting alone has
    the shorter `--connect-timeout` (within `-t`): a host that drops packets fails fast.
    """

    def __init__(self, settings: Settings):
        self.base_url = settings.ollama
        self.kind = settings.upstream_api  # what the -o upstream speaks
        self.timeout = settings.timeout / 1000
        self.connect_timeout = min(settings.connect_timeout, settings.timeout) / 1000
        self.attempts = 1 + settings.retry_attempts
        self.backoff = Backoff(settings.retry_min_interval / 1000,
                               settings.retry_max_interval / 1000)
        key = upstream_key(settings) if settings.enable_shared_mode else ""
        self.probe_headers = with_credentials({}, self.kind, key)
        self.transport = Transport(settings.upstream_pool_size, self.connect_timeout)

    def kind_of(self, target: UpstreamTarget | None) -> str:
        """The API an upstream speaks: a routed `target`'s `api`, `--upstream-api` for
        the -o upstream (None)."""
        return target.api if target is not None else self.kind

    def request_headers(self, ex: Exchange) -> dict[str, str]:
        headers = forwardable(ex.headers, NOT_FORWARDED_REQUEST)
        headers["accept-encoding"] = "identity"  # relay bytes as they come, never re-encode
        headers["x-request-id"] = ex.request_id
        return headers

    def send(self, ex: Exchange) -> Response:
        """Call the upstream with retries; raise `UpstreamUnavailable`/`UpstreamTimeout`.

        A failure is retried only before anything of its response was used: connection
        errors, timeouts before the headers, and the statuses in `RETRY_STATUSES`. The
        exchange's admission slot is given back during each back-off and taken again
        before the next attempt (which may then wait in the admission queue, or get 503).

        With a route (`ex.route`, `--upstreams`) each candidate upstream gets its own
        retries, its key and its model names; one that still fails (a transport error, a
        timeout or a 5xx, all before any byte went on) hands the exchange to the next
        candidate, the admission slot moving with it. The last one's answer is the answer.
        """
        route = ex.route
        if route is None:
            return self._local(ex, self.kind) or self._call(ex, self._leg(ex, None), last=True)
        while True:
            target = route.current
            local = self._local(ex, target.api)
            if local is not None:
                return local
            leg = self._leg(ex, target)
            route.started(target)
            last = route.index + 1 >= len(route.candidates)
            try:
                response = self._call(ex, leg, last, route)
            except BridgeError as failure:
                route.ended(target)
                if last:
                    raise
                log.warning("upstream %r failed (%s); failing over to %r [%s]", target.name,
                            failure.message, route.candidates[route.index + 1].name,
                            ex.request_id)
            else:
                # the call is over with the whole body, or when its stream is closed
                response.on_close(partial(route.ended, target))
                return response
            route.fail_over()
            events.emit("upstream.failover", upstream=target.name)
            slot = ex.slot  # the slot belongs to the upstream given up: take the next one's
            if slot is not None:
                slot.release()
                slot.retake()

    @staticmethod
    def _local(ex: Exchange, kind: str) -> Response | None:
        """The answer the bridge gives itself for an upstream of `kind` that has no such
        thing (`crossing.local_answer`), if any."""
        local = crossing.local_answer(ex, kind)
        if local is None:
            return None
        return Response(status=200, headers={"content-type": "application/json"},
                        body=encode_json(local))

    def longest(self, route: Route | None) -> float:
        """The longest an exchange's upstream call may legitimately take, in seconds:
        every attempt of every candidate of its route (each with its own timeout) and the
        longest back-off between two attempts. What waits on another's call (a single
        flight's followers) waits that long, and not less, before giving up on it."""
        timeouts = [self.timeout] if route is None else [
            self._timeout_of(target) for target in route.candidates]
        backoffs = (self.attempts - 1) * self.backoff.max_interval
        return sum(self.attempts * timeout + backoffs for timeout in timeouts)

    def _timeout_of(self, target: UpstreamTarget) -> float:
        return target.timeout_ms / 1000 if target.timeout_ms else self.timeout

    def _leg(self, ex: Exchange, target: UpstreamTarget | None) -> Leg:
        """What goes to one upstream: its URL, headers (with its key, in the header its
        kind reads) and body (with its model name); translated when its kind does not
        speak the exchange's wire (raises `BadRequest` for what it cannot express)."""
        base, kind = self.base_url if target is None else target.url, self.kind_of(target)
        key = None if target is None else target.key  # its own key, or none, or the client's
        headers = with_credentials(self.request_headers(ex), kind, key)
        for name, value in crossing.kind_of(kind).headers.items():  # what its API wants
            headers.setdefault(name, value)                          # on every request
        timeout = self.timeout if target is None else self._timeout_of(target)
        model_map = target.model_map if target is not None else None
        translation = crossing.plan(ex, kind, target.name if target else "-o", model_map)
        if translation is not None:
            outbound = translation.outbound
            headers.pop("content-type", None)
            if translation.body:
                headers["content-type"] = "application/json"
            headers.update(outbound.headers)
            return Leg(joined(base, kind, outbound.path), headers, translation.body, timeout,
                       target, outbound.method, translation)
        suffix = upstream_path(ex) + (f"?{ex.query}" if ex.query else "")
        body = ex.body
        model = ex.model
        if model_map and model in model_map and ex.is_model_request:
            body = encode_json({**ex.payload, "model": model_map[model]})
        return Leg(joined(base, kind, suffix), headers, body, timeout, target, ex.method)

    def _call(self, ex: Exchange, leg: Leg, last: bool, route: Route | None = None
              ) -> Response:
        """One upstream's attempts. Unless it is the `last` candidate, a 5xx after its
        retries raises (the next candidate gets the exchange) instead of being answered."""
        name = leg.target.name if leg.target is not None else None
        for attempt in range(1, self.attempts + 1):
            ex.upstream_attempts += 1
            deadline = time.monotonic() + leg.timeout
            retry_after = None
            failure: BridgeError | None = None
            span = spans.start_child(ex, f"upstream {name or '-o'}", SpanKind.CLIENT)
            if span.is_recording():  # off: not even the attributes are made
                span.set_attributes(self._span_attributes(leg, attempt))
            try:
                upstream = self.transport.send(leg.method, leg.url,
                                               spans.with_traceparent(leg.headers, span),
                                               leg.body, leg.timeout)
            except TransportError as exc:
                failure = self.transport_error(exc, leg)
                detail = type(exc).__name__
            else:
                span.set_attribute("http.response.status_code", upstream.status_code)
                if time.monotonic() > deadline:  # connect + headers took the whole budget
                    upstream.close()
                    failure = self.timeout_error("did not answer within", leg.timeout)
                    detail = "headers after the timeout"
                elif upstream.status_code not in RETRY_STATUSES or (
                        attempt == self.attempts and (last or upstream.status_code < 500)):
                    if route is not None and leg.target is not None:
                        route.answered(leg.target, upstream.status_code < 500)
                    return self._answered(ex, upstream, deadline, leg, span)
                else:
                    retry_after = parse_retry_after(upstream.headers.get("retry-after"))
                    detail = f"status {upstream.status_code}"
                    failure = UpstreamUnavailable(f"upstream {name!r} answered "
                                                  f"{upstream.status_code}")
                    upstream.close()
            spans.failed(span, detail)
            span.end()
            if route is not None and leg.target is not None:
                route.answered(leg.target, False)
            if attempt == self.attempts:
                break
            wait = self.backoff.delay(attempt, retry_after)
            log.warning("upstream%s attempt %d/%d failed (%s); retrying in %.3fs [%s]",
                        f" {name!r}" if name else "", attempt, self.attempts, detail, wait,
                        ex.request_id)
            events.emit("upstream.retry")
            self._back_off(ex, wait)
        log.error("upstream%s failed after %d attempt(s) (%s) [%s]",
                  f" {name!r}" if name else "", self.attempts, detail, ex.request_id)
        assert failure is not None
        raise failure

    def _span_attributes(self, leg: Leg, attempt: int) -> dict[str, str | int]:
        """What a span of one upstream attempt says of it: the upstream's name, kind and
        URL (scheme, host, port and path: never a credential or a query)."""
        url = urlsplit(leg.url)
        port = f":{url.port}" if url.port else ""
        return {"bridge.upstream.name": leg.target.name if leg.target is not None else "-o",
                "gen_ai.system": self.kind_of(leg.target),
                "http.request.method": leg.method,
                "url.full": f"{url.scheme}://{url.hostname}{port}{url.path}",
                "server.address": url.hostname or "",
                "bridge.upstream.attempt": attempt}

    def _answered(self, ex: Exchange, upstream: Answer, deadline: float, leg: Leg,
                  span: Span) -> Response:
        """`_response`, with the attempt's span ended when the response is done with (its
        whole body read, or its stream closed)."""
        try:
            response = self._response(ex, upstream, deadline, leg)
        except BaseException as exc:
            spans.failed(span, exc)
            span.end()
            raise
        if span.is_recording():  # off: nothing registered on the response
            if response.status >= 500:
                spans.failed(span, f"status {response.status}")
            response.on_close(span.end)
        return response

    @staticmethod
    def _back_off(ex: Exchange, wait: float) -> None:
        slot = ex.slot
        if slot is not None:
            slot.release()
        try:
            time.sleep(wait)
        finally:
            if slot is not None:
                slot.retake()

    def _response(self, ex: Exchange, upstream: Answer, deadline: float,
                  leg: Leg) -> Response:
        """The answer as the stages get it: on the exchange's wire, scrubbed of the
        credentials its request carried (`scrubber`)."""
        redactor = scrubber(leg)
        headers = forwardable({k.lower(): v for k, v in upstream.headers.items()},
                              NOT_FORWARDED_RESPONSE)
        codec = streaming.codec_for(upstream.headers.get("content-type", ""))
        translation = leg.crossing
        if translation is not None:  # its answer goes on in the exchange's wire
            for name in ("content-type", "content-length"):
                headers.pop(name, None)
        elif codec is None and not ex.is_model_request and "content-length" not in upstream.headers:
            codec = streaming.RAW  # unknown chunked body (e.g. a download): relay as it comes
        if codec is not None and upstream.ok and (translation is None or codec != streaming.RAW):
            wire = codec if translation is None else translation.codec
            response = streaming.stream_response(upstream.status_code, headers, iter(()), wire)
            # frames are scrubbed as they are read; raw chunks by the redactor's own reader,
            # which holds back the end of each (a secret may straddle two)
            inline = redactor if wire != streaming.RAW else None
            # the connection is closed however the stream ends, read or not (a client
            # hanging up stops the generation upstream)
            response.frames = Stream(self._frames(ex, response, upstream, codec, deadline, leg,
                                                  inline), upstream.close)
            return scrubbed(response, redactor, frames=inline is None)
        with closing(upstream):
            body = b"".join(self._body(upstream, deadline, leg.timeout))
        status = upstream.status_code
        if translation is not None:
            status, answer = translation.whole(status, body)
            if not isinstance(answer, bytes):  # a stream asked for, a body given
                return scrubbed(streaming.stream_response(status, headers, answer,
                                                          translation.codec), redactor)
            body = answer
            headers["content-type"] = "application/json"
        if status < 400 and ex.is_model_request:
            ex.usage = usage_in(body) or ex.usage
        return scrubbed(Response(status=status, headers=headers, body=body), redactor)

    def _body(self, upstream: Answer, deadline: float, timeout: float) -> Iterator[bytes]:
        """The upstream body as it arrives (`Transport.body`), within the `-t` budget; one
        that outlives it is a 504, one that ends before its end (a dropped connection,
        fewer bytes than its Content-Length) a 502 saying so."""
        try:
            yield from self.transport.body(upstream, deadline)
        except BodyTimeout:
            raise self.timeout_error("response exceeded", timeout) from None
        except BodyCut:
            raise UpstreamUnavailable("upstream closed the response early",
                                      code="upstream_closed_early") from None

    def timeout_error(self, what: str, timeout: float) -> UpstreamTimeout:
        return UpstreamTimeout(f"upstream {what} the {timeout:g}s timeout"
                               + (" (-t)" if timeout == self.timeout else ""))

    def transport_error(self, exc: Exception, leg: Leg) -> BridgeError:
        """The gateway error for a failure before the answer: 504 for timeouts, else 502.
        A routed upstream is named, never shown by URL."""
        if isinstance(exc, ConnectTimeout):
            return UpstreamTimeout(f"upstream did not accept a connection within the "
                                   f"{self.connect_timeout:g}s connect timeout "
                                   "(--connect-timeout)")
        if is_timeout(exc):
            return self.timeout_error("did not answer within", leg.timeout)
        if leg.target is not None:
            return UpstreamUnavailable(f"upstream {leg.target.name!r} unreachable")
        return UpstreamUnavailable(f"upstream unreachable: {self.base_url}")

    def _frames(self, ex: Exchange, response: Response, upstream: Answer,
                codec: str, deadline: float, leg: Leg,
                redactor: Redactor | None) -> Iterator[Frame]:
        """Relay frames as they arrive (scrubbed by `redactor`, if any); a stream that does
        not end normally ends with an in-band error. `response.outcome` says how it ended.
        An upstream that sent its own in-band error before it stopped has said what went
        wrong: no second error is added. (The connection is closed by the `Stream` around
        this generator.)"""
        failure: BridgeError | None = None
        counted = ex.is_model_request and codec != streaming.RAW
        told = False  # the upstream sent an in-band error
        frames = streaming.READERS[codec](self._body(upstream, deadline, leg.timeout))
        if leg.crossing is not None:  # read on the exchange's wire from here on
            frames, codec = leg.crossing.frames(frames), leg.crossing.codec
        secrets = redactor.forms if redactor is not None else ()
        seen = None  # what was last looked in (`Frame.read`), and what it may hold:
        usage = ended = error = secret = False
        sse = codec == streaming.SSE  # whose end is `[DONE]` (`streaming.is_terminal`)
        try:
            for frame in frames:
                # Each look is a scan of the frame's read for what it looks for, then of
                # the frame if the read holds it (mostly not): no call, no parsing.
                read = frame.read or frame.raw
                if read is not seen:
                    seen = read
                    usage = counted and (USAGE_MARKERS[0] in read or USAGE_MARKERS[1] in read)
                    ended = b"[DONE]" in read or b'"done"' in read
                    error = b'"error"' in read
                    secret = any(form in read for form in secrets)
                if usage:  # read here: a stage may drop the frame the client did not ask for
                    ex.usage = usage_in(frame.raw) or ex.usage
                if ended and (frame.raw == b"[DONE]" if sse
                              else streaming.is_terminal(frame, codec)):
                    response.outcome = "complete"
                elif error and streaming.is_error(frame):
                    told = True
                if secret:
                    frame = redactor.frame(frame)  # type: ignore[union-attr]
                yield frame
        except BridgeError as err:
            failure = err
        if codec == streaming.RAW and failure is None:
            response.outcome = "complete"
        if response.outcome == "complete":
            return
        if isinstance(failure, UpstreamTimeout):
            response.outcome = "timeout"
            message, code = failure.message, failure.code
        elif told:
            response.outcome = "truncated"
            log.warning("upstream stream ended with its own error [%s]", ex.request_id)
            return
        else:
            response.outcome = "truncated"
            message, code = "upstream stream ended prematurely", "upstream_stream_truncated"
        log.error("upstream stream cut (%s): %s [%s]", response.outcome, message, ex.request_id)
        if codec != streaming.RAW:  # the bridge's own words: nothing to scrub
            yield streaming.error_frame(ex.surface, message, code or "stream_error")

    def capabilities(self, model: str, authorization: str | None = None,
                     timeout: float = 5.0, target: UpstreamTarget | None = None
                     ) -> list[str] | None:
        """The model's capabilities as Ollama's `POST /api/show` lists them (e.g.
        `thinking`); None when the upstream cannot tell (not Ollama, an unknown model,
        a failure): the caller then decides without them. `target`: ask that routed
        upstream, under its name for the model and with its key."""
        if self.kind_of(target) != "ollama":
            return None  # only an Ollama says
        caps = self.get_json("/api/show", target, authorization, timeout,
                             {"model": target.upstream_model(model) if target else model})
        caps = caps.get("capabilities") if isinstance(caps, dict) else None
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            return None
        return caps

    def get_json(self, path: str, target: UpstreamTarget | None = None,
                 authorization: str | None = None, timeout: float = 5.0,
                 body: object = None) -> object:
        """The JSON an upstream answers to a GET of `path` (a POST of `body`, if given),
        for the bridge's own questions (capabilities, model lists, probes); None on any
        failure or a status other than 200. A routed upstream gets its own key, if any."""
        headers = {"authorization": authorization} if authorization else {}
        status, data = self.ask(path, target, headers, timeout, body, read=True)
        return data if status == 200 else None

    def ask(self, path: str, target: UpstreamTarget | None, headers: dict[str, str],
            timeout: float = 5.0, body: object = None, read: bool = False
            ) -> tuple[int | None, object]:
        """One question of the bridge's own to an upstream (`path` with `headers` as
        given, a POST of `body` if any, no retries): its status (None when it did not
        answer) and, with `read`, its JSON (None when not JSON or not a 200). The
        credential goes as the upstream's kind reads it (a routed upstream's own key, if
        it has one), with the headers its API needs."""
        base, kind = target.url if target is not None else self.base_url, self.kind_of(target)
        headers = with_credentials({"accept-encoding": "identity", **headers}, kind,
                                   target.key if target is not None else None)
        headers.update(crossing.kind_of(kind).headers)
        if body is not None:
            headers["content-type"] = "application/json"
        timeout = min(timeout, self.timeout)
        try:
            with closing(self.transport.send("POST" if body is not None else "GET",
                                             joined(base, kind, path),
                                         headers, encode_json(body) if body is not None
                                         else b"", timeout)) as answer:
                if not read or answer.status_code != 200:
                    return answer.status_code, None
                return 200, json.loads(b"".join(self._body(answer, time.monotonic() + timeout,
                                                           timeout)))
        except (BridgeError, TransportError):
            return None, None
        except ValueError:
            return 200, None

    def readiness(self, timeout: float = 2.0) -> str:
        """"ready" when the upstream answers HTTP (any status: clients bring their own
        credentials), else why not. In shared mode the probe carries the bridge's upstream
        key, as every request does, and a 401/403 means the upstream refuses that key.
        An Ollama is asked for `/`, another kind for its kind's probe."""
        kind = crossing.kind_of(self.kind)
        path = "/" if self.kind == "ollama" else kind.probe
        try:
            answer = self.transport.session.get(
                joined(self.base_url, self.kind, path),
                headers={**self.probe_headers, **kind.headers}, timeout=(timeout, timeout))
            answer.close()
        except TransportError:
            return NOT_REACHABLE
        if self.probe_headers and answer.status_code in (401, 403):
            return KEY_REFUSED
        return READY
