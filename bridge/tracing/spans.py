"""The spans of one exchange, for the stages that add a child span to it.

The tracing stage hangs the exchange's server span on it (`Traced`, in `ex.notes`); the
cache, the upstream client and the Lua stage open their child spans with `child` or
`start_child`. When tracing is off no exchange carries one: these calls make no span
and cost a dictionary lookup, and the span they hand out is OpenTelemetry's no-op one.
"""

from __future__ import annotations

from typing import Any, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.core.exchange import Exchange

NOTE = "tracing.traced"  # ex.notes: the exchange's `Traced`
PROPAGATOR = TraceContextTextMapPropagator()  # W3C `traceparent` / `tracestate`


class Traced:
    """An exchange's server span, and what its children are made with."""

    __slots__ = ("tracer", "span", "context")

    def __init__(self, tracer: Tracer, span: Span):
        self.tracer = tracer
        self.span = span
        self.context: Context = trace.set_span_in_context(span)


def start_child(ex: Exchange, name: str, kind: SpanKind = SpanKind.INTERNAL,
                attributes: Mapping[str, Any] | None = None) -> Span:
    """A child span of the exchange's span, started now (the caller ends it); the no-op
    span when the exchange is not traced."""
    traced: Traced | None = ex.notes.get(NOTE)
    if traced is None:
        return INVALID_SPAN
    return traced.tracer.start_span(name, context=traced.context, kind=kind,
                                    attributes=attributes)


class _Child:
    """`with child(…) as span`: the span ends with the block, in error if it raised."""

    __slots__ = ("span",)

    def __init__(self, span: Span):
        self.span = span

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            failed(self.span, exc)
        self.span.end()


_UNTRACED = _Child(INVALID_SPAN)  # ends nothing, records nothing: shared by every call


def child(ex: Exchange, name: str, attributes: Mapping[str, Any] | None = None) -> _Child:
    """A child span of the exchange's span for the length of a `with` block."""
    if NOTE not in ex.notes:
        return _UNTRACED
    return _Child(start_child(ex, name, attributes=attributes))


def failed(span: Span, exc: BaseException | str) -> None:
    """Mark `span` as failed (its status ERROR, with a short description, never a body)."""
    if span.is_recording():
        what = exc if isinstance(exc, str) else type(exc).__name__
        span.set_status(Status(StatusCode.ERROR, what))


def with_traceparent(headers: dict[str, str], span: Span) -> dict[str, str]:
    """`headers` with the `traceparent` (and `tracestate`) of `span`, for the upstream
    call that span stands for; `headers` itself when there is no span."""
    if not span.get_span_context().is_valid:
        return headers
    headers = dict(headers)
    PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
    return headers

