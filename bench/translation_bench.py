"""What protocol translation (issue 26) costs beside the native pass-through, in one run:

1. In process, through `bridge.surfaces.crossing`, for each client wire → upstream kind
   (ollama → openai, ollama → anthropic, openai → anthropic, anthropic → openai): the
   request translated and a whole answer translated back (µs per request), and a stream
   of N upstream chunks split, translated and written for the client (µs per chunk),
   best of R rounds, in the CPU time of the bench's thread (what the code costs, not
   what other processes on the machine take from it); beside the same client's request
   to an upstream that speaks its wire (an Ollama: the crossing's plan is "as it is",
   the frames are only split and written). The upstreams' answers are the stand-in's,
   of each kind, to the very request the crossing sends.
2. Through a real bridge (2 gevent workers, loopback): req/s and p50 of a stream on
   `/api/chat` to an OpenAI-only stand-in (translated) and to an Ollama stand-in
   (native), alternately, best of R load runs each (`bench/loadgen.py`).

    python bench/translation_bench.py [--chunks N] [--rounds R] [--duration S]
                                      [--connections C] [--in-process-only]

Bounded (a fixed number of iterations and timed load runs); everything started here is
stopped by its PID before it exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen import load, machine_line, tool  # noqa: E402

from bridge.core import streaming  # noqa: E402
from bridge.core.exchange import Exchange  # noqa: E402
from bridge.ollama_standin import StandInConfig  # noqa: E402
from bridge.ollama_standin import kinds as standin_kinds  # noqa: E402
from bridge.ollama_standin import routes as standin_routes  # noqa: E402
from bridge.serve.processes import start_bridge, start_standin  # noqa: E402
from bridge.surfaces import adapter_for, crossing, edge  # noqa: E402

MODEL = "llama3.2"
SYSTEM = "You are a careful assistant."
VERSION = {"anthropic-version": "2023-06-01"}
# (client API, its wire's path, the upstream kind it is translated to)
PAIRS = (("ollama", "/api/chat", "openai"), ("ollama", "/api/chat", "anthropic"),
         ("openai", "/v1/chat/completions", "anthropic"),
         ("anthropic", "/v1/messages", "openai"))
NATIVE_KIND = "ollama"  # speaks both of the pipeline's wires: the pass-through


def question(chunks: int) -> str:
    """A prompt whose answer streams in about `chunks` chunks (the stand-in echoes it,
    one word per chunk)."""
    return " ".join(f"w{index}" for index in range(chunks))


def client_request(api: str, chunks: int, stream: bool) -> dict[str, Any]:
    ask = [{"role": "user", "content": question(chunks)}]
    if api == "anthropic":
        return {"model": MODEL, "max_tokens": 4 * chunks, "system": SYSTEM,
                "messages": ask, "temperature": 0.2, "stream": stream}
    options = {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, *ask],
               "stream": stream}
    if api == "openai":
        return {**options, "temperature": 0.2, "max_tokens": 4 * chunks}
    return {**options, "options": {"temperature": 0.2, "num_predict": 4 * chunks}}


def exchange(api: str, path: str, payload: dict[str, Any]) -> Exchange:
    """The exchange the web layer makes of the client's request (the translated client
    APIs made native at the edge, as the pipeline sees them)."""
    surface, endpoint = ("openai", "chat") if path.startswith("/v1/") else ("ollama", "chat")
    headers = {"content-type": "application/json", **(VERSION if api == "anthropic" else {})}
    ex = Exchange(surface=surface, endpoint=endpoint, method="POST", path=path, query="",
                  headers=headers, body=json.dumps(payload).encode(), request_id="bench",
                  payload=dict(payload), api=api)
    if edge.translated(ex):
        edge.begin(ex)
    return ex


def upstream_answer(kind: str, method: str, path: str, body: bytes) -> bytes | list[bytes]:
    """The stand-in's answer, as a `kind` upstream, to what the crossing sends it: a whole
    body, or a stream's chunks as they come off the wire."""
    call = standin_routes.Call(method, path, {"content-type": "application/json", **VERSION},
                               body, StandInConfig(kind=kind), None)
    reply = standin_kinds.handle(call)
    if isinstance(reply, standin_routes.StreamReply):
        return [payload for payload, _ in reply.frames]
    if reply.status != 200:
        raise SystemExit(f"the {kind} stand-in refused {method} {path}: {reply.body[:300]!r}")
    return reply.body


@dataclass
class Way:
    """One client request's way to one upstream kind: the cost of each step."""

    name: str
    request: Callable[[], Any]  # the request, made ready for the upstream
    whole: Callable[[], Any]  # the whole answer, made ready for the client
    stream: Callable[[], int]  # a stream split and made ready for the client (its chunks)


def route(api: str, path: str, kind: str, chunks: int) -> Way:
    """How a request of `api` goes to an upstream of `kind` (translated unless it speaks
    the wire) and how its answers come back, as callables to time."""
    whole_ex = exchange(api, path, client_request(api, chunks, stream=False))
    stream_ex = exchange(api, path, client_request(api, chunks, stream=True))
    surface = adapter_for(api)  # the edge's adapter of a translated client API

    def plan(ex: Exchange) -> crossing.Crossing | None:
        return crossing.plan(ex, kind, "bench")

    asked = client_request(api, chunks, stream=False)

    def request() -> Any:
        return plan(exchange(api, path, asked))

    whole_plan, stream_plan = plan(whole_ex), plan(stream_ex)
    codec = streaming.SSE if path.startswith("/v1/") else streaming.NDJSON
    if whole_plan is None:  # the pass-through: the wire's request as it is
        body = upstream_answer(kind, "POST", whole_ex.path, whole_ex.body)
        chunks_in = upstream_answer(kind, "POST", stream_ex.path, stream_ex.body)
        upstream_codec = codec
    else:
        out = whole_plan.outbound
        body = upstream_answer(kind, out.method, out.path, whole_plan.body)
        out = stream_plan.outbound
        chunks_in = upstream_answer(kind, out.method, out.path, stream_plan.body)
        upstream_codec = streaming.SSE
    assert isinstance(body, bytes) and isinstance(chunks_in, list)
    read = streaming.read_sse if upstream_codec == streaming.SSE else streaming.read_ndjson
    call = edge.call_of(stream_ex)

    def whole() -> Any:
        answer = body if whole_plan is None else whole_plan.whole(200, body)[1]
        if surface is not None:  # the edge: the native answer in the client's shape
            return surface.body(json.loads(answer), edge.call_of(whole_ex))
        return answer

    def stream() -> int:
        frames = read(chunks_in)
        if stream_plan is not None:
            frames = stream_plan.frames(frames)
        translator = surface.translator(call) if surface is not None else None
        written = 0
        for frame in frames:
            if translator is not None:  # the edge: each native frame as the client's events
                data = frame.data if frame.raw else None  # not a flush()
                if not isinstance(data, dict):
                    continue
                for event in translator.frame(data):
                    written += len(streaming.encode(event, streaming.SSE))
            else:
                written += len(streaming.encode(frame, codec))
        return len(chunks_in)

    name = f"{api} -> {kind}" if whole_plan is not None else f"{api} -> {kind} (native)"
    return Way(name, request, whole, stream)


def best_us(step: Callable[[], Any], rounds: int, budget: float = 0.2) -> float:
    """The best of `rounds` rounds of µs per call of `step` (each round about `budget`
    seconds, at least a few calls), in CPU time of this thread: on a busy machine the
    time other processes take between two calls is not counted."""
    start = time.thread_time()
    step()
    once = max(time.thread_time() - start, 1e-6)
    calls = max(3, min(10_000, int(budget / once)))
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            step()
        best = min(best, (time.thread_time() - start) / calls)
    return best * 1e6


def in_process(chunks: int, rounds: int) -> None:
    print(f"in process: µs per request (request + whole answer) and per stream chunk "
          f"({chunks}-word answers), best of {rounds} rounds, CPU time")
    header = (f"{'client -> upstream':<28}{'request µs':>12}{'whole µs':>10}"
              f"{'per chunk µs':>14}{'  vs native (request+whole, chunk)'}")
    print(header)
    print("-" * len(header))
    for api, path, kind in PAIRS:
        rows = []
        for upstream in (NATIVE_KIND, kind):
            way = route(api, path, upstream, chunks)
            per_stream = way.stream()  # the upstream's chunks in one stream
            rows.append((way.name, best_us(way.request, rounds), best_us(way.whole, rounds),
                         best_us(way.stream, rounds) / per_stream))
        (native_name, n_req, n_whole, n_chunk), (name, req, whole, chunk) = rows
        print(f"{native_name:<28}{n_req:>12.1f}{n_whole:>10.1f}{n_chunk:>14.2f}")
        print(f"{name:<28}{req:>12.1f}{whole:>10.1f}{chunk:>14.2f}"
              f"  +{req + whole - n_req - n_whole:.1f} µs, +{chunk - n_chunk:.2f} µs")


def through_bridges(chunks: int, rounds: int, connections: int, seconds: float) -> None:
    body = json.dumps(client_request("ollama", chunks, stream=True))
    print(f"\nthrough a bridge (2 gevent workers), a {chunks}-word stream on /api/chat, "
          f"{connections} connections, best of {rounds} x {seconds:g} s; load: {tool()}")
    logs = Path(tempfile.mkdtemp(prefix="bench-translation-"))
    with start_standin(log_dir=logs) as native, \
            start_standin("--kind", "openai", log_dir=logs) as openai_only, \
            start_bridge(upstream=native.url, workers=2, log_dir=logs) as to_native, \
            start_bridge("--upstream-api", "openai", upstream=openai_only.url, workers=2,
                         log_dir=logs) as to_openai:
        bridges = {"ollama upstream (native)": to_native.url,
                   "OpenAI-only upstream (translated)": to_openai.url}
        runs: dict[str, list[dict]] = {name: [] for name in bridges}
        for url in bridges.values():  # warm up: connections, caches of each worker
            load(url + "/api/chat", body, connections, 1.0)
        for _ in range(rounds):  # alternately: drift on the machine hits both alike
            for name, url in bridges.items():
                result = load(url + "/api/chat", body, connections, seconds)
                if result["errors"] or result["non2xx"]:
                    raise SystemExit(f"{name}: {result['errors']} errors, "
                                     f"{result['non2xx']} non-2xx")
                runs[name].append(result)
        best = {name: max(results, key=lambda run: run["rps"])
                for name, results in runs.items()}
        for name, run in best.items():
            print(f"{name:<36}{run['rps']:>8.0f} req/s   p50 {run['p50_ms']:7.2f} ms   "
                  f"p99 {run['p99_ms']:7.2f} ms")
        native_run, translated = best.values()
        print(f"translated / native: {translated['rps'] / native_run['rps']:.2f}x req/s, "
              f"p50 +{translated['p50_ms'] - native_run['p50_ms']:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100, help="words of a streamed answer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--in-process-only", action="store_true",
                        help="leave out the load runs through real bridges")
    args = parser.parse_args()
    print(machine_line())
    in_process(args.chunks, args.rounds)
    if not args.in_process_only:
        through_bridges(args.chunks, min(args.rounds, 3), args.connections, args.duration)


if __name__ == "__main__":
    main()
