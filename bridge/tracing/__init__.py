"""OpenTelemetry traces: a span per model request, with child spans for the cache lookup,
each upstream call and each Lua hook run (off unless an OTLP endpoint is given)."""
