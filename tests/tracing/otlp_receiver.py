"""A test OTLP/HTTP collector: a small HTTP server in the test process that decodes the
`ExportTraceServiceRequest`s POSTed to `/v1/traces` into plain span records."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client",
         Span.SPAN_KIND_INTERNAL: "internal"}


def value_of(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@dataclass
class Received:
    """One span as a collector got it."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    failed: bool
    resource: dict[str, Any] = field(repr=False)


class Receiver:
    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.posts: list[dict[str, str]] = []  # the headers of each export
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(self.path, dict(self.headers), body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Receiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(self, path: str, headers: dict[str, str], body: bytes) -> None:
        assert path == "/v1/traces", path
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(Received(
                        name=span.name, kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        attributes={a.key: value_of(a.value) for a in span.attributes},
                        failed=span.status.code == Status.STATUS_CODE_ERROR,
                        resource=resource))
        with self._lock:
            self.posts.append(headers)
            self.spans.extend(found)

    def trace(self, trace_id: str) -> list[Received]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def server_span(self, request_id: str) -> Received | None:
        with self._lock:
            return next((span for span in self.spans if span.kind == "server"
                         and span.attributes.get("bridge.request_id") == request_id), None)

    def children(self, parent: Received) -> list[Received]:
        with self._lock:
            return [span for span in self.spans if span.parent_id == parent.span_id
                    and span.trace_id == parent.trace_id]
