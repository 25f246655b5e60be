"""The benchmarks' load generator: a bounded run of keep-alive POSTs at N connections.

`load(url, body, connections, seconds, headers)` uses `wrk` when installed (`apt-get install wrk`),
else a gevent client in its own process (gevent patches everything it runs in). Both
report the same figures: requests, rps, p50_ms, p99_ms, errors (transport), non2xx.

    python bench/loadgen.py URL --body JSON [--connections N] [--duration S]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

HEADERS = {"Content-Type": "application/json"}

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
%s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "seconds": %%f, "errors": %%d, "non2xx": %%d, "p50_ms": %%f, '
    .. '"p99_ms": %%f}\\n', summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def met(ok: bool) -> str:
    """How a bench prints whether a target was reached."""
    return "met" if ok else "MISSED"


def machine_line() -> str:
    """The load the run started on: figures of a shared machine are read against it."""
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"load average before the run: {load_avg} on {os.cpu_count()} CPUs "
            "(other processes share them)")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def tool() -> str:
    return "wrk" if shutil.which("wrk") else "a gevent client"


def load(url: str, body: str, connections: int, seconds: float,
         headers: dict[str, str] | None = None) -> dict:
    """One bounded load run; `headers` are sent with every request (besides the JSON
    content type)."""
    headers = headers or {}
    if shutil.which("wrk"):
        return _wrk(url, body, connections, seconds, headers)
    result = subprocess.run([sys.executable, __file__, url, "--body", body,
                             "--connections", str(connections), "--duration", str(seconds),
                             "--headers", json.dumps(headers)],
                            capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def warm_load(url: str, body: str, connections: int, seconds: float) -> dict:
    """`load` after a second of the same load (connections open, a cache entry stored)."""
    load(url, body, connections, 1.0)
    return load(url, body, connections, seconds)


def summary(result: dict) -> str:
    """One load run's figures, as the benches print them on one line."""
    return (f"{result['rps']:8.0f} req/s  p50 {result['p50_ms']:6.1f} ms  p99 "
            f"{result['p99_ms']:6.1f} ms  errors {result['errors']}  non-2xx {result['non2xx']}")


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _wrk(url: str, body: str, connections: int, seconds: float, headers: dict[str, str]
         ) -> dict:
    extra = "\n".join(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
                      for name, value in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (_lua_string(body), extra))
    try:
        result = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s",
             "-s", script.name, url], capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(script.name)
    line = [line for line in result.stdout.splitlines() if line.startswith("{")][-1]
    stats = json.loads(line)
    stats["rps"] = stats["requests"] / stats["seconds"]
    return stats


def _gevent_load(url: str, body: str, connections: int, seconds: float,
                 headers: dict[str, str]) -> None:
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
                conn.request("POST", parts.path, body, {**HEADERS, **headers})
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
    print(json.dumps({
        "requests": len(latencies), "seconds": elapsed, "rps": len(latencies) / elapsed,
        "errors": failures[0], "non2xx": failures[1],
        "p50_ms": percentile(latencies, 0.5) * 1000 if latencies else 0,
        "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else 0}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--body", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--headers", default="{}", help="JSON object of extra headers")
    args = parser.parse_args()
    _gevent_load(args.url, args.body, args.connections, args.duration, json.loads(args.headers))
