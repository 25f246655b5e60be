"""What Redis costs and gives, measured in one run (bridges on 2 gevent workers each):

1. cache hits from each tier: req/s and p50/p99 latency of hits answered from the memory
   tier, from the local disk tier (no memory tier) and from the Redis tier (no memory
   tier, `--redis-url`), with `bench/loadgen.py` at C connections;
2. the cost Redis adds to a miss: sequential fresh misses through a bridge with the
   cache, `-r` and `--max-concurrency` on, without and with `--redis-url` (bucket, slot
   and single-flight lease become Redis round trips); the p50/p99 difference.

Each figure is printed with its target and whether it is met.

    python bench/redis_bench.py [--duration S] [--connections C] [--misses N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import load, met, percentile, tool  # noqa: E402 - imports nothing gevent must patch first

# targets: a Redis hit within this factor of a local disk hit (p50), and the Redis round
# trips of a miss within this many ms (p50)
REDIS_HIT_VS_DISK_TARGET = 2.0
MISS_OVERHEAD_TARGET_MS = 2.0
CACHE_FLAGS = ("--enable-cache", "--cache-ttl", "86400000")
MISS_FLAGS = ("-r", "60000", "--max-concurrency", "64")


def chat_body(question: str) -> dict:
    return {"model": "qwen3", "messages": [{"role": "user", "content": question}]}


def ask(url: str, body: dict) -> tuple[str, float]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"{url} answered {response.status}")
    return response.getheader("x-cache") or "", elapsed


def bench_tiers(standin_url: str, redis_url: str, workdir: Path, seconds: float,
                connections: int) -> dict[str, dict]:
    from bridge.serve.processes import start_bridge

    tiers = {"memory": (), "disk": ("--cache-memory-entries", "0"),
             "redis": ("--cache-memory-entries", "0", "--redis-url", redis_url,
                       "--redis-prefix", f"bench-{uuid.uuid4().hex[:6]}")}
    results = {}
    for tier, flags in tiers.items():
        body = chat_body(f"Why is the sky blue? ({tier})")
        with start_bridge(*CACHE_FLAGS, "--cache-dir", str(workdir / f"cache-{tier}"), *flags,
                          upstream=standin_url, workers=2, log_dir=workdir) as bridge:
            ask(bridge.url, chat_body("warm up"))  # the upstream lets everyone in
            ask(bridge.url, body)  # the miss that stores it
            for _ in range(50):  # memory: promoted once hot; the others: hits from the start
                status, _ = ask(bridge.url, body)
            expected = {"memory": "HIT-MEMORY", "disk": "HIT-DISK", "redis": "HIT-REDIS"}[tier]
            if status != expected:
                print(f"  warning: {tier} run answered {status}, not {expected}")
            results[tier] = load(bridge.url + "/v1/chat/completions", json.dumps(body),
                                 connections, seconds)
    memory = results["memory"]
    print(f"cache hits, {connections} connections, {seconds:g}s each ({tool()}):")
    for tier, stats in results.items():
        print(f"  {tier:6s} {stats['rps']:8.0f} req/s  p50 {stats['p50_ms']:6.2f} ms  "
              f"p99 {stats['p99_ms']:6.2f} ms  rps x{stats['rps'] / memory['rps']:.2f} of memory"
              f"  errors {stats['errors']} non2xx {stats['non2xx']}")
    ratio = results["redis"]["p50_ms"] / max(results["disk"]["p50_ms"], 1e-9)
    print(f"  Redis hit p50 x{ratio:.2f} of a disk hit (target <= "
          f"x{REDIS_HIT_VS_DISK_TARGET:g}): {met(ratio <= REDIS_HIT_VS_DISK_TARGET)}")
    return results


def bench_miss_cost(standin_url: str, redis_url: str, workdir: Path, misses: int) -> float:
    from bridge.serve.processes import start_bridge

    figures = {}
    for name, flags in (("local", ()), ("redis", ("--redis-url", redis_url, "--redis-prefix",
                                                  f"bench-{uuid.uuid4().hex[:6]}"))):
        with start_bridge(*CACHE_FLAGS, *MISS_FLAGS, "--cache-dir", str(workdir / f"m-{name}"),
                          *flags, upstream=standin_url, workers=2, log_dir=workdir) as bridge:
            ask(bridge.url, chat_body("warm up"))
            latencies = []
            for _ in range(misses):
                status, elapsed = ask(bridge.url, chat_body(f"miss {uuid.uuid4().hex}"))
                assert status == "MISS", status
                latencies.append(elapsed * 1000)
        figures[name] = (percentile(latencies, 0.5), percentile(latencies, 0.99))
    added = figures["redis"][0] - figures["local"][0]
    print(f"misses ({misses} sequential, cache + -r + --max-concurrency):")
    for name, (p50, p99) in figures.items():
        print(f"  {name:6s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(f"  Redis adds {added:+.2f} ms at p50, "
          f"{figures['redis'][1] - figures['local'][1]:+.2f} ms at p99 (target p50 <= "
          f"{MISS_OVERHEAD_TARGET_MS:g} ms): {met(added <= MISS_OVERHEAD_TARGET_MS)}")
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--misses", type=int, default=500)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("needs redis-server (apt-get install redis-server)")
    from bridge.serve.processes import start_redis, start_standin

    workdir = Path(tempfile.mkdtemp(prefix="redis-bench-"))
    standin = start_standin(log_dir=workdir)
    redis = start_redis(workdir)
    try:
        bench_tiers(standin.url, redis.url, workdir, args.duration, args.connections)
        bench_miss_cost(standin.url, redis.url, workdir, args.misses)
    finally:
        redis.stop()
        standin.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
