"""What the proxy path costs: the Ollama stand-in called directly, through a bare Flask
view forwarding the same POST with `requests` (the yardstick, `bench/reference_proxy.py`),
and through the bridge, all on gunicorn with 2 gevent workers in front of one stand-in.

    python bench/proxy_bench.py [--duration S] [--connections N] [--ttfb-requests N]

Measures non-stream req/s and p50/p99 latency at 64 concurrent keep-alive connections
(with `wrk` when installed, `apt-get install wrk`; else a gevent load generator in its own
process), and the time to the first byte of a stream, bridge vs direct. Every process is
started on a free loopback port and stopped by its PID at the end; each load run is
bounded in time. Targets: bridge >= 80% of the reference view's req/s; TTFB overhead < 2 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.processes import (  # noqa: E402
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
HEADERS = {"Content-Type": "application/json"}

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "seconds": %%f, "errors": %%d, "non2xx": %%d, "p50_ms": %%f, '
    .. '"p99_ms": %%f}\\n', summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def load_with_wrk(url: str, connections: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % lua_string(BODY))
    try:
        result = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s",
             "-s", script.name, url + PATH], capture_output=True, text=True,
            timeout=seconds + 60)
    finally:
        os.unlink(script.name)
    line = [line for line in result.stdout.splitlines() if line.startswith("{")][-1]
    stats = json.loads(line)
    stats["rps"] = stats["requests"] / stats["seconds"]
    return stats


def load_with_gevent(url: str, connections: int, seconds: float) -> dict:
    """The fallback load generator, in its own process (gevent patches everything)."""
    result = subprocess.run([sys.executable, __file__, "--load-generator", url,
                             "--connections", str(connections), "--duration", str(seconds)],
                            capture_output=True, text=True, timeout=seconds + 60)
    return json.loads(result.stdout.splitlines()[-1])


def gevent_load_generator(url: str, connections: int, seconds: float) -> None:
    from gevent import monkey

    monkey.patch_all()
    import gevent

    parts = urlsplit(url)
    latencies: list[float] = []
    failures = [0, 0]  # transport errors, non-2xx
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                conn.request("POST", PATH, BODY, HEADERS)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                failures[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                continue
            latencies.append(time.perf_counter() - started)
            failures[1] += response.status >= 300

    began = time.monotonic()
    gevent.joinall([gevent.spawn(client) for _ in range(connections)])
    elapsed = time.monotonic() - began
    latencies.sort()
    print(json.dumps({
        "requests": len(latencies), "seconds": elapsed, "rps": len(latencies) / elapsed,
        "errors": failures[0], "non2xx": failures[1],
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else 0,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0}))


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


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--ttfb-requests", type=int, default=300)
    parser.add_argument("--load-generator", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_generator:
        gevent_load_generator(args.load_generator, args.connections, args.duration)
        return 0

    load = load_with_wrk if shutil.which("wrk") else load_with_gevent
    logs = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    print(f"load average before the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs (other processes share them)")
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
                  f"{'wrk' if load is load_with_wrk else 'a gevent client'}")
            print(f"{'target':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
            results = {}
            for name, url in targets.items():
                load(url, args.connections, min(2.0, args.duration))  # warm-up
                stats = results[name] = load(url, args.connections, args.duration)
                print(f"{name:34} {stats['rps']:8.0f} {stats['p50_ms']:8.1f} "
                      f"{stats['p99_ms']:8.1f} {stats['errors'] + stats['non2xx']:7d}",
                      flush=True)
            samples = time_to_first_byte({"direct": standin.url, "bridge": relay.url,
                                          "bridge (defaults)": defaults.url},
                                         args.ttfb_requests)

    reference_rps = results["reference Flask view + requests"]["rps"]
    print("\nratios of req/s:")
    for name in ("bridge (think filter off)", "bridge (defaults)"):
        ratio = results[name]["rps"] / reference_rps
        print(f"  {name} / reference view: {ratio:.2f} (target >= 0.80)"
              f"{'' if ratio >= 0.8 else '  MISSED'}")
        print(f"  {name} / stand-in direct: "
              f"{results[name]['rps'] / results['stand-in, direct']['rps']:.2f}")
    print(f"\nstreaming time to first byte, {args.ttfb_requests} sequential streams each:")
    direct = statistics.median(samples["direct"])
    for name, values in samples.items():
        median = statistics.median(values)
        extra = "" if name == "direct" else (
            f"  overhead {1000 * (median - direct):+.2f} ms (target < 2 ms)")
        print(f"  {name:18} p50 {1000 * median:6.2f} ms  p90 {1000 * percentile(values, .9):6.2f}"
              f" ms{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
