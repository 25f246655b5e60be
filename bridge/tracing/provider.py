"""Where spans go: the OpenTelemetry SDK's tracer provider, made in each worker, with a
batch processor that exports spans over OTLP/HTTP off the request path (imported only
when tracing is on: `bridge.tracing.switch` says whether it is).

The SDK reads the standard `OTEL_*` variables itself:
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the resource), `OTEL_EXPORTER_OTLP_HEADERS`
and `…_TIMEOUT` (the exporter), `OTEL_TRACES_SAMPLER[_ARG]` (the sampler), `OTEL_BSP_*`
(the batches).

Under gevent the batch processor's worker thread is a greenlet: it waits for its
schedule without blocking the loop. Its export is not run there: encoding a batch of 512
spans into protobuf is pure Python, tens of milliseconds in which the loop would serve
nobody (`bench/tracing_bench.py` part 2 measures both ways). So the exporter runs in one
native thread of the worker (`SerialThread`, as SQLite does): encoding and the POST there,
the loop going on between the GIL's hand-overs.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bridge import __version__
from bridge.core.offloop import SerialThread
from bridge.core.settings import Settings
from bridge.tracing.switch import traces_url

DEFAULT_SERVICE_NAME = "deepseek-ollama-bridge"


def resource() -> Resource:
    """The bridge as a service: the SDK's resource (`OTEL_RESOURCE_ATTRIBUTES`,
    `OTEL_SERVICE_NAME`), named "deepseek-ollama-bridge" unless those name it."""
    found = Resource.create({SERVICE_VERSION: __version__})
    if str(found.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        found = found.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return found


def make_provider(settings: Settings) -> TracerProvider:
    """A tracer provider exporting in batches; made in each worker (after the fork: its
    worker thread and connection belong to one process)."""
    provider = TracerProvider(resource=resource())  # the sampler from OTEL_TRACES_SAMPLER
    endpoint = traces_url(settings.otlp_endpoint) if settings.otlp_endpoint else None
    exporter = OffLoop(OTLPSpanExporter(endpoint=endpoint))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class OffLoop(SpanExporter):
    """An exporter whose work runs in one native thread of the process (off the event
    loop under gevent; in the caller's thread without it)."""

    def __init__(self, exporter: SpanExporter):
        self.exporter = exporter
        self.thread = SerialThread()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.thread.run(self.exporter.export, spans)

    def shutdown(self) -> None:
        self.thread.run(self.exporter.shutdown)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.thread.run(self.exporter.force_flush, timeout_millis)
