"""The tracing stage: one SERVER span per model request, named and attributed after the
OpenTelemetry GenAI conventions, continuing the client's W3C `traceparent`.

It is the outermost stage, so its span covers every other stage and sees every answer
(upstream, cache, refusal). The span ends when the exchange closes: after the last frame
of a stream, with the exchange's usage as `bridge.observability.stage.spent` reads it
(reported figures only, never an estimate). What is never put in a span: prompts,
answers, headers, credentials; a client key appears by its NAME only.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from opentelemetry.trace import SpanKind

from bridge.core.exchange import Exchange, Frame
from bridge.core.forking import PerProcess
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings
from bridge.observability.stage import spent
from bridge.tracing import switch
from bridge.tracing.spans import NOTE, PROPAGATOR, Traced, failed

# gen_ai.operation.name of each model endpoint
OPERATIONS = {"chat": "chat", "completions": "text_completion", "generate": "text_completion",
              "embeddings": "embeddings", "embed": "embeddings"}
_SERVED_MODEL = "tracing.model"  # ex.notes: the model the answer names
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


class TracingStage(Stage):
    name = "tracing"

    def __init__(self, settings: Settings):
        self.kind = settings.upstream_api  # the -o upstream's: gen_ai.system without a route
        self.provider = PerProcess(lambda: _make_provider(settings))
        self.tracer = None

    def start(self) -> None:
        self.tracer = self.provider.get().get_tracer("bridge.tracing")

    def stop(self) -> None:
        if self.provider.made_here():
            self.provider.get().shutdown()  # exports what is still queued

    def on_request(self, ex: Exchange) -> None:
        if not ex.is_model_request or self.tracer is None:
            return
        operation = OPERATIONS.get(ex.endpoint, ex.endpoint)
        model = ex.model
        span = self.tracer.start_span(
            f"{operation} {model}".strip(), context=PROPAGATOR.extract(ex.headers),
            kind=SpanKind.SERVER, attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                "http.request.method": ex.method,
                "url.path": ex.path,
                "bridge.api": ex.api,
                "bridge.request_id": ex.request_id,
            })
        ex.notes[NOTE] = Traced(self.tracer, span)
        ex.on_close(self._end)  # the first closer registered: it runs last

    def on_response(self, ex: Exchange) -> None:
        response = ex.response
        if NOTE not in ex.notes or response is None:
            return
        if response.streaming:
            response.map_frames(lambda frames: _named(ex, frames), keeps_marks=True)
        else:
            ex.notes[_SERVED_MODEL] = model_in(response.body)

    def _end(self, ex: Exchange) -> None:
        traced: Traced = ex.notes[NOTE]
        span, response = traced.span, ex.response
        used = spent(ex)  # this closer runs last: the other stages' closers have run
        route = ex.route
        attributes = {
            "gen_ai.system": route.current.api if route is not None else self.kind,
            "bridge.cache.result": ex.cache_status or "NONE",
            "bridge.upstream.attempts": ex.upstream_attempts,
        }
        model = ex.notes.get(_SERVED_MODEL)
        if model:
            attributes["gen_ai.response.model"] = model
        if used is not None and not used.estimated:
            attributes["gen_ai.usage.input_tokens"] = used.usage.prompt
            attributes["gen_ai.usage.output_tokens"] = used.usage.completion
        if ex.client_key:
            attributes["bridge.client_key"] = ex.client_key  # its NAME, never the key
        if route is not None:
            attributes["bridge.upstream.name"] = route.current.name
        if response is not None:
            attributes["http.response.status_code"] = response.status
            if response.outcome:
                attributes["bridge.stream.outcome"] = response.outcome
            if response.status >= 500:
                failed(span, f"status {response.status}")
        span.set_attributes(attributes)
        span.end()


def _named(ex: Exchange, frames: Iterator[Frame]) -> Iterator[Frame]:
    """Pass every frame on, noting the model the stream's first frame names."""
    for frame in frames:
        ex.notes[_SERVED_MODEL] = model_in(frame.raw)
        yield frame
        break
    yield from frames


def model_in(raw: bytes) -> str | None:
    """The model a JSON body or frame names (`"model": "…"`), read from the bytes: inside
    a JSON string the quotes would be escaped, so only a real key matches."""
    found = _MODEL.search(raw)
    return found.group(1).decode("utf-8", "replace") if found else None


def make_stage(settings: Settings, context: Context) -> Stage | None:
    return TracingStage(settings) if switch.enabled(settings) else None


def _make_provider(settings: Settings) -> Any:
    # imported here: the SDK and its exporter take longer to import than the rest of the
    # bridge's stages together, and only a worker that traces needs them
    from bridge.tracing import provider

    return provider.make_provider(settings)
