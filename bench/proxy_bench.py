"""What the proxy path costs: the Ollama stand-in called directly, through a bare Flask
view forwarding the same POST with `requests` (the yardstick, `bench/reference_proxy.py`),
and through the bridge, all on gunicorn with 2 gevent workers in front of one stand-in.

    python bench/proxy_bench.py [--duration S] [--connections N] [--ttfb-requests N]

Measures req/s and p50/p99 latency at 64 concurrent keep-alive connections
(`bench/loadgen.py`: `wrk` when installed, else a gevent client) for non-stream POSTs
and for streamed ones of a reasoning model whose answer starts with a think block
(`deepseek-r1:7b`, stand-in think mode `tags`: the think filter has work to do), and the
time to the first byte of a stream, bridge vs direct (the reference view's alongside, for
scale). Every process is started on a free loopback port and stopped by its PID at the
end; each load run is bounded in time.
Targets (issue 11): bridge >= 0.95x the reference view's req/s, non-stream and streamed
(think filter on); TTFB overhead < 1 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen import HEADERS, load, machine_line, met, percentile, tool  # noqa: E402

from bridge.serve.processes import (  # noqa: E402
    LOOPBACK,
    free_port,
    start_bridge,
    start_server,
    start_standin,
)

PATH = "/v1/chat/completions"
BODY = json.dumps({"model": "llama3.2",
                   "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
STREAM_BODY = json.dumps({"model": "llama3.2", "stream": True,
                          "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
# The streamed load: a reasoning model, its answer after a think block at the start.
THINK_STREAM_BODY = json.dumps({"model": "deepseek-r1:7b", "stream": True,
                                "messages": [{"role": "user",
                                              "content": "Why is the sky blue?"}]})
THINK_HEADERS = {"X-Standin-Think": "tags"}
MISS_TARGET = STREAM_TARGET = 0.95
TTFB_TARGET_MS = 1.0


def count_frames(url: str) -> int:
    """SSE events in one streamed answer of the streamed load."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", PATH, THINK_STREAM_BODY, {**HEADERS, **THINK_HEADERS})
        return conn.getresponse().read().count(b"data: ")
    finally:
        conn.close()


def run_loads(targets: dict[str, str], body: str, headers: dict[str, str], args) -> dict:
    print(f"{'target':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    results = {}
    for name, url in targets.items():
        load(url + PATH, body, args.connections, min(2.0, args.duration), headers)  # warm-up
        stats = results[name] = load(url + PATH, body, args.connections, args.duration,
                                     headers)
        print(f"{name:34} {stats['rps']:8.0f} {stats['p50_ms']:8.1f} "
              f"{stats['p99_ms']:8.1f} {stats['errors'] + stats['non2xx']:7d}", flush=True)
    return results


def print_ratios(results: dict, target: float) -> None:
    reference_rps = results["reference Flask view + requests"]["rps"]
    for name in ("bridge (think filter off)", "bridge (defaults)"):
        ratio = results[name]["rps"] / reference_rps
        print(f"  {name} / reference view: {ratio:.2f} (target >= {target:.2f}) "
              f"{met(ratio >= target)}")
        print(f"  {name} / stand-in direct: "
              f"{results[name]['rps'] / results['stand-in, direct']['rps']:.2f}")

def time_to_first_byte(urls: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Sequential streams on kept-alive connections, the targets interleaved so that they
    share the machine's noise: seconds from sending the request to the first body byte."""
    conns = {name: http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port,
                                              timeout=30) for name, url in urls.items()}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    for round_ in range(rounds + 10):
        for name, conn in conns.items():
            started = time.perf_counter()
            conn.request("POST", PATH, STREAM_BODY, HEADERS)
            response = conn.getresponse()
            first = response.read1(65536)
            elapsed = time.perf_counter() - started
            rest = response.read()
            assert first and (first + rest).rstrip().endswith(b"[DONE]"), name
            if round_ >= 10:  # the first rounds warm up pools and caches
                samples[name].append(elapsed)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--ttfb-requests", type=int, default=300)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    print(machine_line())
    with start_standin(log_dir=logs) as standin:
        reference_port = free_port()
        reference_cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2",
                         "--worker-connections", "2000", "--keep-alive", "75",
                         "-b", f"{LOOPBACK}:{reference_port}", "--chdir", str(ROOT / "bench"),
                         "reference_proxy:app"]
        with start_server(reference_cmd, f"http://{LOOPBACK}:{reference_port}", "/health",
                          env={"REFERENCE_UPSTREAM": standin.url}, log_dir=logs) as reference, \
                start_bridge("--disable-think-filter", upstream=standin.url, workers=2,
                             log_dir=logs) as relay, \
                start_bridge(upstream=standin.url, workers=2, log_dir=logs) as defaults:
            targets = {
                "stand-in, direct": standin.url,
                "reference Flask view + requests": reference.url,
                "bridge (think filter off)": relay.url,
                "bridge (defaults)": defaults.url,
            }
            print(f"\nnon-stream POST {PATH}, {args.connections} connections, "
                  f"{args.duration:g} s per target, load from "
                  f"{tool()}")
            results = run_loads(targets, BODY, {}, args)
            print(f"\nstreamed POST {PATH}, deepseek-r1:7b with a think block at the start "
                  f"({count_frames(standin.url)} SSE events per answer from the stand-in), "
                  f"{args.connections} connections, {args.duration:g} s per target")
            streamed = run_loads(targets, THINK_STREAM_BODY, THINK_HEADERS, args)
            samples = time_to_first_byte({"direct": standin.url, "reference view": reference.url,
                                          "bridge": relay.url, "bridge (defaults)": defaults.url},
                                         args.ttfb_requests)

    print("\nratios of req/s, non-stream:")
    print_ratios(results, MISS_TARGET)
    print("ratios of req/s, streamed (the think filter removes the think block):")
    print_ratios(streamed, STREAM_TARGET)
    print(f"\nstreaming time to first byte, {args.ttfb_requests} sequential streams each:")
    direct = statistics.median(samples["direct"])
    reference = statistics.median(samples["reference view"])
    for name, values in samples.items():
        median = statistics.median(values)
        overhead = 1000 * (median - direct)
        # the reference view's own hop, for scale: what any Python relay of this kind costs
        extra = "" if name == "direct" else f"  overhead {overhead:+.2f} ms" + (
            "" if name == "reference view" else
            f" (target < {TTFB_TARGET_MS:g} ms) {met(overhead < TTFB_TARGET_MS)}, "
            f"{1000 * (median - reference):+.2f} ms vs the reference view")
        print(f"  {name:18} p50 {1000 * median:6.2f} ms  p90 {1000 * percentile(values, .9):6.2f}"
              f" ms{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
