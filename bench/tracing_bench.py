"""The cost of OpenTelemetry traces: per request in this process (µs), per exported batch
(the protobuf encoding, and what it does to a worker's event loop), and through real
bridges (req/s) with tracing off and on, all in one run against the same references.

    python bench/tracing_bench.py [--rounds N] [--duration S]

(`bench/usage_bench.py` runs all of it too, after the usage ledger's and budgets' costs:
the issue's one run. This script runs the tracing parts alone.)

Part 1 runs what one traced request does in this process: the tracing stage's server
span, the cache lookup's and the upstream call's child spans, the `traceparent` made for
the upstream, each span ended into a batch processor (whose exporter drops them: the
export is part 2); next to the same request's calls with tracing off (no stage: the
children's no-op check) and a reference that makes the exchange and its response only.
CPU time of the measuring thread is printed beside wall time: on a shared machine it is
the cost, the wall time adds the waits for a CPU.

Part 2 times the export of one batch of 512 spans: the encoding alone, and encoding +
POST to a local collector; and how late the event loop of a gevent-patched process runs
while batches are exported in the processor's greenlet or in a native thread.

Part 3 runs real bridges (2 gevent workers) against the stand-in, tracing off and on,
each with cache hits (the fast-hit path is off when tracing is on: each request gets its
span) and with every request a call upstream (the cache off); the collector is a local
sink in this process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

if "--loop-probe" in sys.argv:  # that process is patched as a gevent worker is, first
    from gevent import monkey
    monkey.patch_all()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: E402
    OTLPSpanExporter,
)
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402

from bench.loadgen import machine_line, summary, tool, warm_load  # noqa: E402
from bench.lua_bench import ANSWER, BODY, CHAT  # noqa: E402 - one sample chat
from bridge.core import settings as bridge_settings  # noqa: E402
from bridge.core.exchange import Exchange, Response  # noqa: E402
from bridge.serve.processes import start_bridge, start_standin  # noqa: E402
from bridge.tracing import provider, spans, switch  # noqa: E402
from bridge.tracing.stage import TracingStage  # noqa: E402

HEADERS = {"content-type": "application/json", "user-agent": "OpenAI/Python 1.99",
           "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
UPSTREAM_HEADERS = {"content-type": "application/json", "accept-encoding": "identity",
                    "x-request-id": "1"}
BATCH = 512  # the batch processor's default OTEL_BSP_MAX_EXPORT_BATCH_SIZE


class Sink:
    """A collector that takes every export and answers 200, in a thread of this process."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def one_request(stage: TracingStage | None, index: int) -> Exchange:
    """What the tracing touches of one request that misses the cache and calls upstream."""
    ex = Exchange(surface="openai", endpoint="chat", method="POST", path=CHAT, query="",
                  headers=dict(HEADERS), body=BODY.encode(), request_id=str(index),
                  payload=json.loads(BODY))
    if stage is not None:
        stage.on_request(ex)
    with spans.child(ex, "cache lookup") as lookup:
        if lookup.is_recording():
            lookup.set_attribute("bridge.cache.result", "MISS")
    call = spans.start_child(ex, "upstream -o", SpanKind.CLIENT)
    if call.is_recording():
        call.set_attributes({"bridge.upstream.name": "-o", "url.full": "http://127.0.0.1/x"})
    spans.with_traceparent(UPSTREAM_HEADERS, call)
    ex.response = Response(status=200, headers={"content-type": "application/json"},
                           body=ANSWER)
    if call.is_recording():
        ex.response.on_close(call.end)
    if stage is not None:
        stage.on_response(ex)
    ex.close()
    return ex


def reference(index: int) -> Exchange:
    """The exchange and response alone: what every request makes anyway."""
    ex = Exchange(surface="openai", endpoint="chat", method="POST", path=CHAT, query="",
                  headers=dict(HEADERS), body=BODY.encode(), request_id=str(index),
                  payload=json.loads(BODY))
    ex.response = Response(status=200, headers={"content-type": "application/json"},
                           body=ANSWER)
    ex.close()
    return ex


def timed(run: Callable[[int], Any], rounds: int) -> tuple[float, float, float]:
    """Median wall time, its p99 and median CPU time of this thread, of `run`, in µs.
    On a shared machine the CPU time is the cost; the wall time adds waiting for a CPU."""
    walls, cpus = [], []
    for index in range(rounds):
        cpu, started = time.thread_time(), time.perf_counter()
        run(index)
        walls.append(time.perf_counter() - started)
        cpus.append(time.thread_time() - cpu)
    walls.sort()
    return (statistics.median(walls) * 1e6, walls[int(len(walls) * 0.99)] * 1e6,
            statistics.median(cpus) * 1e6)


class Discard(SpanExporter):
    """An exporter that drops its batches: the request path's cost alone (part 2 is the
    export's)."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def bench_in_process(rounds: int) -> float:
    """Part 1; returns the CPU µs tracing adds to a request (on minus off)."""
    tracer_provider = TracerProvider(resource=provider.resource())
    tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
    stage = TracingStage(bridge_settings.defaults())
    stage.tracer = tracer_provider.get_tracer("bench")
    rows = [("reference (exchange + response)", lambda i: reference(i)),
            ("tracing off (no stage)", lambda i: one_request(None, i)),
            ("tracing on (3 spans, batched)", lambda i: one_request(stage, i))]
    for _, run in rows:
        timed(run, rounds // 10)  # warm-up
    print(f"Part 1: per request in this process ({rounds} rounds; spans queued for a "
          "batch processor whose exporter drops them)")
    results = {name: timed(run, rounds) for name, run in rows}
    base_wall, _, base_cpu = results[rows[0][0]]
    for name, (wall, p99, cpu) in results.items():
        print(f"  {name:34} CPU {cpu:6.1f} µs (+{cpu - base_cpu:5.1f})  wall median "
              f"{wall:6.1f} µs (+{wall - base_wall:5.1f}), p99 {p99:7.1f} µs")
    tracer_provider.shutdown()
    return results[rows[2][0]][2] - results[rows[1][0]][2]


def bench_batch(sink: Sink) -> None:
    batch = make_batch()
    exporter = OTLPSpanExporter(endpoint=switch.traces_url(sink.url))
    encode = [timed(lambda _: encode_spans(batch).SerializeToString(), 1) for _ in range(30)]
    export = [timed(lambda _: exporter.export(batch), 1) for _ in range(30)]
    size = len(encode_spans(batch).SerializeToString())
    print(f"Part 2: one batch of {BATCH} spans ({size / 1024:.0f} KiB of protobuf)")
    for name, runs in (("encode", encode), ("encode + POST to the collector", export)):
        cpu = statistics.median(run[2] for run in runs)
        wall = statistics.median(run[0] for run in runs)
        print(f"  {name:34} CPU {cpu / 1000:6.2f} ms ({cpu / BATCH:5.1f} µs per span)  "
              f"wall median {wall / 1000:6.2f} ms")
    exporter.shutdown()


def make_batch() -> list:
    """A batch of spans as one traced request makes them."""
    memory = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=provider.resource())
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    stage = TracingStage(bridge_settings.defaults())
    stage.tracer = tracer_provider.get_tracer("bench")
    while len(memory.get_finished_spans()) < BATCH:
        one_request(stage, 0)
    return list(memory.get_finished_spans()[:BATCH])


def loop_probe(batches: int) -> None:
    """(In a process of its own, patched by gevent as a worker is.) How long the event
    loop stalls while batches are exported: a greenlet that sleeps 1 ms notes how late
    it wakes, while another exports one batch after the other, as the batch processor's
    worker does, with the export in that greenlet or in a native thread (`OffLoop`)."""
    import gevent
    import gevent.event

    sink, batch = Sink(), make_batch()
    exporters = {"in the processor's greenlet": OTLPSpanExporter(
                     endpoint=switch.traces_url(sink.url)),
                 "in a native thread (OffLoop)": provider.OffLoop(OTLPSpanExporter(
                     endpoint=switch.traces_url(sink.url)))}
    print(f"  event loop lateness while {batches} batches are exported, one after the other:")
    for name, exporter in exporters.items():
        lags: list[float] = []
        done = gevent.event.Event()
        probe = gevent.spawn(_tick, lags, done)
        gevent.sleep(0.05)
        exporting = time.perf_counter()
        for _ in range(batches):
            gevent.spawn(exporter.export, batch).join()
        exporting = time.perf_counter() - exporting
        done.set()
        probe.join()
        lags.sort()
        print(f"    {name:30} worst {lags[-1] * 1000:6.1f} ms  p99 "
              f"{lags[int(len(lags) * 0.99)] * 1000:6.1f} ms  median "
              f"{statistics.median(lags) * 1000:5.2f} ms  ({exporting / batches * 1000:.1f} "
              "ms per batch)")
        exporter.shutdown()


def _tick(lags: list[float], done: Any) -> None:
    """Sleep 1 ms at a time until `done`, noting how late each wake-up is."""
    while not done.is_set():
        started = time.perf_counter()
        time.sleep(0.001)  # gevent's, once patched
        lags.append(time.perf_counter() - started - 0.001)


def bench_bridges(sink: Sink, seconds: float, work: Path) -> None:
    print(f"Part 3: through a bridge, 64 connections, {seconds:.0f} s each, 2 workers "
          f"({tool()})")
    with start_standin(log_dir=work) as standin:
        for load_name, cache in (("cache hits", True), ("upstream calls", False)):
            for name, flags in (("off", ()), ("on", ("--otlp-endpoint", sink.url))):
                cached = ("--enable-cache", "--cache-dir", str(work / f"c-{name}")) if cache \
                    else ()
                with start_bridge(*cached, *flags, upstream=standin.url, workers=2,
                                  log_dir=work) as bridge:
                    result = warm_load(bridge.url + CHAT, BODY, 64, seconds)
                print(f"  {load_name:15} tracing {name:3} {summary(result)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--loop-probe", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop_probe:
        loop_probe(args.loop_probe)
        return
    print(machine_line())
    run(args.rounds, args.duration)


def run(rounds: int, duration: float) -> float:
    """Parts 1 to 3; returns the CPU µs tracing adds to a request in process."""
    sink = Sink()
    added = bench_in_process(rounds)
    bench_batch(sink)
    sys.stdout.flush()
    subprocess.run([sys.executable, __file__, "--loop-probe", "10"], check=True, timeout=600)
    with tempfile.TemporaryDirectory(prefix="tracing-bench-") as work:
        bench_bridges(sink, duration, Path(work))
    return added


if __name__ == "__main__":
    main()
