"""Where spans go: the OpenTelemetry SDK's tracer provider, made in each worker, with a
batch processor that exports spans over OTLP/HTTP off the request path.

Tracing is on with `--otlp-endpoint URL` (the collector's base URL, the spans are POSTed
to `URL/v1/traces`) or with the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. The SDK reads the other `OTEL_*` variables itself:
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the resource), `OTEL_EXPORTER_OTLP_HEADERS`
and `…_TIMEOUT` (the exporter), `OTEL_TRACES_SAMPLER[_ARG]` (the sampler), `OTEL_BSP_*`
(the batches). `OTEL_SDK_DISABLED=true` turns tracing off whatever else says.

Under gevent the batch processor's worker thread is a greenlet: it waits for its
schedule without blocking the loop. Its export is not run there: encoding a batch of 512
spans into protobuf is pure Python, tens of milliseconds in which the loop would serve
nobody (`bench/tracing_bench.py` part 2 measures both ways). So the exporter runs in one
native thread of the worker (`SerialThread`, as SQLite does): encoding and the POST there,
the loop going on between the GIL's hand-overs.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bridge import __version__
from bridge.core.offloop import SerialThread
from bridge.core.settings import Settings

DEFAULT_SERVICE_NAME = "deepseek-ollama-bridge"
TRACES_PATH = "/v1/traces"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def enabled(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether traces are exported: an endpoint given by flag or environment, and the
    SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(settings.otlp_endpoint) or any(environ.get(name) for name in ENDPOINT_VARIABLES)


def traces_url(base: str) -> str:
    """The URL spans are POSTed to, for a collector at `base`."""
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


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
