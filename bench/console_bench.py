"""What the operator's console costs: `/status` (ms) on 1 and 8 workers, one request's
record in the request log (µs, in this process: the labels the access hook adds and the
ring's append), and the request path with the console off (`--disable-console`) vs on
(request log included) with a page polling `/status` and `/status/requests` every
second, on the same stand-in.

    python bench/console_bench.py [--duration S] [--connections N] [--status-requests N]

Targets: `/status` p50 < 50 ms on 8 workers (it reads every worker's metrics files);
the request path with a page open keeps >= 95% of the req/s with the console off (the
page's one poll a second is its only cost; the request path itself does no more than
before but one event per error answer). Figures on a shared machine are noise: the
lead runs this on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen import load, machine_line, percentile, tool  # noqa: E402

from bridge.console import recent  # noqa: E402
from bridge.core.exchange import Exchange, Response, Usage  # noqa: E402
from bridge.core.redaction import Redactor  # noqa: E402
from bridge.observability import stage as observe  # noqa: E402
from bridge.serve.processes import start_bridge, start_standin  # noqa: E402

PATH = "/v1/chat/completions"
BODY = '{"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}'
STATUS_P50_TARGET_MS = 50.0
PATH_RATIO_TARGET = 0.95
RECORD_TARGET_US = 10.0


def status_cost(url: str, rounds: int) -> tuple[float, float]:
    """p50 and p99 in ms of sequential `/status` requests on one kept-alive connection."""
    with requests.Session() as session:
        session.get(url + "/status", timeout=10).raise_for_status()  # history baseline
        took = []
        for _ in range(rounds):
            started = time.perf_counter()
            session.get(url + "/status", timeout=10).raise_for_status()
            took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), percentile(took, 0.99)


def poll_status(url: str, stop: threading.Event) -> None:
    """An open console page: one `/status` and one `/status/requests` a second."""
    with requests.Session() as session:
        while not stop.wait(1.0):
            session.get(url + "/status", timeout=10)
            session.get(url + "/status/requests", timeout=10)


def record_cost(rounds: int, bodies: bool) -> float:
    """µs per request that the request log adds to the request path: the labels the
    access hook gathers for it (`logged`) and the ring's append (`Recorder`); the flush
    to the run directory runs off the request, at most every 0.5 s."""
    ex = Exchange(surface="openai", endpoint="chat", method="POST", path=PATH, query="",
                  headers={}, body=BODY.encode(), request_id="r" * 32,
                  payload=json.loads(BODY), cache_status="MISS", client_key="team-a",
                  usage=Usage(12, 34))
    ex.response = Response(200, body=b'{"choices": []}')
    if bodies:
        ex.notes[observe._PROMPT] = ex.body
    fields = {"path": PATH, "request_id": ex.request_id, "api": "openai", "upstream": "-"}
    recorder = recent.Recorder(Redactor(), 200)
    recorder.requests.flush_due = True  # measured without its (off-request) flush
    started = time.perf_counter()
    for _ in range(rounds):
        recorder("request.finished", 0.01, {"route": PATH, "method": "POST", "status": "200",
                                            "client_key": "team-a",
                                            **observe.logged(ex, fields)})
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--status-requests", type=int, default=200)
    parser.add_argument("--record-rounds", type=int, default=200_000)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="console-bench-"))
    print(f"{machine_line()}; load from {tool()}")
    met = []
    print("\nrequest log: one request's record on the request path")
    for bodies in (False, True):
        cost = record_cost(args.record_rounds, bodies)
        print(f"  {'with' if bodies else 'without'} --request-log-bodies: {cost:.2f} µs")
        if not bodies:
            met.append((f"request log record < {RECORD_TARGET_US:g} µs", cost < RECORD_TARGET_US,
                        f"{cost:.2f} µs"))
    with start_standin(log_dir=logs) as standin:
        print(f"\n/status, {args.status_requests} sequential requests after some traffic")
        for workers in (1, 8):
            with start_bridge("--enable-cache", "--cache-dir", str(logs / f"cache{workers}"),
                              upstream=standin.url, workers=workers, log_dir=logs) as bridge:
                load(bridge.url + PATH, BODY, 8, min(2.0, args.duration))  # every worker's files
                p50, p99 = status_cost(bridge.url, args.status_requests)
            print(f"  {workers} worker(s): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
            if workers == 8:
                met.append((f"/status p50 on 8 workers < {STATUS_P50_TARGET_MS:g} ms",
                            p50 < STATUS_P50_TARGET_MS, f"{p50:.1f} ms"))

        print(f"\nnon-stream POST {PATH}, {args.connections} connections, "
              f"{args.duration:g} s per run, 2 workers")
        rps = {}
        with start_bridge("--disable-console", upstream=standin.url, workers=2,
                          log_dir=logs) as off, \
                start_bridge(upstream=standin.url, workers=2, log_dir=logs) as on:
            stop = threading.Event()
            poller = threading.Thread(target=poll_status, args=(on.url, stop), daemon=True)
            poller.start()
            try:
                for name, url in (("console off", off.url), ("console on, page open", on.url)):
                    load(url + PATH, BODY, args.connections, min(2.0, args.duration))  # warm-up
                    stats = load(url + PATH, BODY, args.connections, args.duration)
                    rps[name] = stats["rps"]
                    print(f"  {name:24} {stats['rps']:8.0f} req/s  p50 {stats['p50_ms']:.1f} ms"
                          f"  p99 {stats['p99_ms']:.1f} ms", flush=True)
            finally:
                stop.set()
                poller.join(timeout=15)
        ratio = rps["console on, page open"] / rps["console off"]
        met.append((f"req/s with the page open >= {PATH_RATIO_TARGET:.0%} of console off",
                    ratio >= PATH_RATIO_TARGET, f"ratio {ratio:.3f}"))

    print("\ntargets:")
    for what, ok, figure in met:
        print(f"  {'MET    ' if ok else 'NOT MET'} {what}: {figure}")


if __name__ == "__main__":
    main()
