"""The cache's speed, measured in one run on 2 gevent workers:

1. memory hits: req/s and p50/p99 of the bridge answering from its memory tier, against a
   bare Flask view returning the same body from memory (both on 2 gunicorn gevent workers,
   measured alternately with `bench/loadgen.py`: wrk, or a gevent client without it);
2. disk hits with 1,000,000 entries on disk: latency p50/p99 through the bridge, and of
   the disk tier's lookup alone;
3. the longest stall of a worker's event loop while the sweeper deletes 1,000,000 expired
   entries (the real sweeper under gevent's monkey-patching, with a 1 ms ticker greenlet).

    python bench/cache_bench.py [--entries N] [--duration S] [--connections C]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # also when run through runpy (the sweep probe)

from loadgen import load, percentile, tool  # noqa: E402 - imports nothing gevent must patch first

QUESTION = "Why is the sky blue?"
DAY_MS = "86400000"


def chat_body(question: str) -> dict:
    return {"model": "qwen3", "messages": [{"role": "user", "content": question}]}


def start_bare_view(body: bytes, workdir: Path):
    from bridge.serve.processes import LOOPBACK, free_port, start_server

    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "--keep-alive", "5",
           "-b", f"{LOOPBACK}:{port}", "--chdir", str(ROOT / "bench"), "bare_view:app"]
    # any answer to the probe, even a 405, means it is up
    return start_server(cmd, f"http://{LOOPBACK}:{port}", "/health",
                        env={"BENCH_BODY_FILE": str(body_file)}, log_dir=workdir)


def post(conn: http.client.HTTPConnection, body: dict) -> tuple[str, bytes, float]:
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    return response.getheader("x-cache", ""), data, (time.perf_counter() - start) * 1000


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)


def fresh_post(url: str, body: dict) -> tuple[str, bytes, float]:
    with contextlib.closing(connect(url)) as conn:
        return post(conn, body)


# --- 1. memory hits against a bare Flask view ----------------------------------------------


def bench_memory(standin_url: str, workdir: Path, seconds: float, connections: int,
                 rounds: int = 2) -> None:
    from bridge.serve.processes import start_bridge

    bridge = start_bridge("--enable-cache", "--cache-dir", str(workdir / "memory-cache"),
                          "--cache-ttl", DAY_MS, "--cache-hot-threshold", "1",
                          upstream=standin_url, workers=2, log_dir=workdir)
    bare_view = None
    try:
        body = chat_body(QUESTION)
        status, answer, _ = fresh_post(bridge.url, body)
        assert status == "MISS", status
        deadline = time.monotonic() + 30
        statuses: list[str] = []
        while statuses.count("HIT-MEMORY") < 20 and time.monotonic() < deadline:
            # both workers: disk hits, promotion into memory within a sweeper round
            statuses = [fresh_post(bridge.url, body)[0] for _ in range(20)]
            time.sleep(0.5)
        _, hit_body, _ = fresh_post(bridge.url, body)
        bare_view = start_bare_view(hit_body, workdir)
        request = json.dumps(body)
        results: dict[str, list[dict]] = {"bare Flask view": [], "bridge memory hit": []}
        for _ in range(rounds):  # alternated, so drift and neighbours hit both alike
            results["bare Flask view"].append(load(bare_view.url + "/v1/chat/completions",
                                                   request, connections, seconds))
            results["bridge memory hit"].append(load(bridge.url + "/v1/chat/completions",
                                                     request, connections, seconds))
        print(f"1. memory hits ({tool()}, {connections} connections, {seconds:g} s x {rounds} "
              f"rounds, 2 gevent workers each, body {len(hit_body)} bytes; "
              f"{statuses.count('HIT-MEMORY')}/20 probes HIT-MEMORY before the run)")
        summary = {}
        for name, runs in results.items():
            summary[name] = {key: statistics.median(run[key] for run in runs)
                             for key in ("rps", "p50_ms", "p99_ms")}
            detail = ", ".join(f"{run['rps']:.0f}" for run in runs)
            print(f"   {name:18}: {summary[name]['rps']:8.0f} req/s (runs: {detail})  "
                  f"p50 {summary[name]['p50_ms']:6.2f} ms  p99 {summary[name]['p99_ms']:6.2f} ms"
                  f"  errors {sum(run['errors'] + run['non2xx'] for run in runs)}")
        bare, hit = summary["bare Flask view"], summary["bridge memory hit"]
        print(f"   ratio bridge/bare: {hit['rps'] / bare['rps']:.0%} of the req/s "
              f"(target >= 60%), p50 x{hit['p50_ms'] / bare['p50_ms']:.2f}, "
              f"p99 x{hit['p99_ms'] / bare['p99_ms']:.2f}")
    finally:
        if bare_view is not None:
            bare_view.stop()
        bridge.stop()


def bench_stage_cost(standin_url: str, workdir: Path, rounds: int = 5000) -> None:
    """In process, without HTTP: what a memory hit costs in the pipeline, and in the cache."""
    from bridge.core import settings as bridge_settings
    from bridge.core.exchange import Exchange
    from bridge.web.app import create_app

    settings = bridge_settings.load(["--enable-cache", "--cache-dir",
                                     str(workdir / "stage-cache"), "-o", standin_url,
                                     "--cache-ttl", DAY_MS])
    app = create_app(settings)
    raw = json.dumps(chat_body(QUESTION)).encode()
    app.test_client().post("/v1/chat/completions", data=raw, content_type="application/json")
    pipeline = app.extensions["bridge.core.pipeline"]
    cache = pipeline.stage("cache")

    def exchange() -> Exchange:
        return Exchange(surface="openai", endpoint="chat", method="POST",
                        path="/v1/chat/completions", query="",
                        headers={"content-type": "application/json"}, body=raw,
                        request_id="bench", payload=json.loads(raw))

    timings = {}
    for name, run in (("whole pipeline", lambda ex: pipeline.handle(ex)),
                      ("cache stage", lambda ex: (cache.on_request(ex), cache.on_response(ex)))):
        start = time.perf_counter()
        for _ in range(rounds):
            ex = exchange()
            run(ex)
            ex.close()
        timings[name] = (time.perf_counter() - start) / rounds * 1e6
    stages = ", ".join(stage.name for stage in pipeline.stages)
    print(f"   in process, per memory hit: pipeline ({stages}) {timings['whole pipeline']:.0f} µs"
          f", of which the cache stage {timings['cache stage']:.0f} µs")


# --- 2. disk hits with a million entries ------------------------------------------------------


def fill(cache_dir: Path, standin_url: str, workdir: Path, entries: int) -> float:
    """A million entries in the sqlitedict table, like real ones (the stand-in's stream for
    a short question), created over the last hour, oldest first. Returns seconds taken."""
    from bridge.cache.disk import FILE_NAME, TABLE, bulk_write
    from bridge.cache.entry import HEADER_SIZE, MAGIC, pack_created
    from bridge.cache.keys import cache_key
    from bridge.serve.processes import start_bridge

    with start_bridge("--enable-cache", "--cache-dir", str(cache_dir), upstream=standin_url,
                      workers=1, log_dir=workdir) as bridge:
        fresh_post(bridge.url, chat_body("template"))
    with contextlib.closing(sqlite3.connect(cache_dir / FILE_NAME)) as db:
        (template,), = db.execute(f'SELECT value FROM "{TABLE}"')
        db.execute(f'DELETE FROM "{TABLE}"')
        db.commit()
    tail = bytes(template)[HEADER_SIZE:]
    start = time.perf_counter()
    oldest = time.time() - 3600
    rows = ((cache_key("openai", "chat", chat_body(f"q{i}"), upstream=standin_url),
             MAGIC + pack_created(oldest + i * (3000 / entries)) + tail)
            for i in range(entries))
    bulk_write(cache_dir, rows, batch=50_000)
    took = time.perf_counter() - start
    size = (cache_dir / FILE_NAME).stat().st_size
    print(f"   filled {entries} entries ({len(tail) + HEADER_SIZE} bytes each, file "
          f"{size / 1e6:.0f} MB) in {took:.1f} s with sqlite3 executemany")
    return took


def bench_disk(standin_url: str, workdir: Path, cache_dir: Path, entries: int,
               samples: int = 2000) -> None:
    from bridge.cache.disk import DiskTier
    from bridge.cache.keys import cache_key
    from bridge.serve.processes import start_bridge

    print(f"2. disk hits with {entries} entries on disk")
    fill(cache_dir, standin_url, workdir, entries)
    picks = random.Random(4).sample(range(entries), samples * 2)
    with start_bridge("--enable-cache", "--cache-dir", str(cache_dir), "--cache-ttl", DAY_MS,
                      "--cache-max-entries", str(max(entries, 4500)),
                      "--cache-hot-threshold", "100000", upstream=standin_url, workers=2,
                      log_dir=workdir) as bridge:
        with contextlib.closing(connect(bridge.url)) as conn:  # one connection: one worker
            for i in picks[:50]:  # warm the worker and the page cache a little
                post(conn, chat_body(f"q{i}"))
            disk, statuses = [], []
            for i in picks[50:50 + samples]:
                status, _, ms = post(conn, chat_body(f"q{i}"))
                statuses.append(status)
                disk.append(ms)
            post(conn, chat_body("a fresh question"))
            memory = [post(conn, chat_body("a fresh question"))[2] for _ in range(samples)]
    hits = statuses.count("HIT-DISK")
    print(f"   through the bridge, one keep-alive connection, {samples} random keys: "
          f"p50 {percentile(disk, 0.5):.2f} ms  p99 {percentile(disk, 0.99):.2f} ms "
          f"({hits}/{samples} HIT-DISK)")
    print(f"   (memory hits the same way: p50 {percentile(memory, 0.5):.2f} ms  "
          f"p99 {percentile(memory, 0.99):.2f} ms)")
    tier = DiskTier(cache_dir, 86400.0, max(entries, 4500)).open()
    try:
        times = []
        for i in picks[samples:]:
            key = cache_key("openai", "chat", chat_body(f"q{i}"), upstream=standin_url)
            start = time.perf_counter()
            assert tier.get(key) is not None
            times.append((time.perf_counter() - start) * 1000)
    finally:
        tier.close()
    print(f"   the disk tier's lookup alone (SQLite read + decode), {samples} random keys: "
          f"p50 {percentile(times, 0.5):.3f} ms  p99 {percentile(times, 0.99):.3f} ms "
          "(target p99 < 2 ms)")


# --- 3. the event loop during a sweep ----------------------------------------------------------


def sweep_probe(cache_dir: str) -> None:
    """In a child process patched like a gunicorn gevent worker: run the real sweeper over
    the file (every entry older than the 30 s TTL) and time a 1 ms ticker greenlet."""
    import logging

    import gevent  # patched before anything else was imported: see bench_sweep

    logging.basicConfig(level=logging.INFO, format="   probe log: %(message)s")

    from bridge.cache.disk import DiskTier
    from bridge.cache.hot import HotTracker
    from bridge.cache.memory import MemoryTier
    from bridge.cache.sweeper import Sweeper

    disk = DiskTier(cache_dir, 30.0, 1_000_000).open()
    before = disk.count()
    gaps: list[float] = []
    running = [True]

    def ticker() -> None:
        last = time.perf_counter()
        while running[0]:
            gevent.sleep(0.001)
            now = time.perf_counter()
            gaps.append((now - last) * 1000 - 1.0)
            last = now

    tick = gevent.spawn(ticker)
    sweeper = Sweeper(MemoryTier(8192, 30.0), disk, HotTracker(12))
    start = time.perf_counter()
    sweeper.start()
    while disk.count() > 0 and time.perf_counter() - start < 600:
        gevent.sleep(0.5)
    took = time.perf_counter() - start
    running[0] = False
    sweeper.stop()
    tick.join()
    print(json.dumps({"deleted": before - disk.count(), "seconds": took,
                      "max_stall_ms": max(gaps), "p99_stall_ms": percentile(gaps, 0.99),
                      "ticks": len(gaps)}))
    disk.close()


def bench_sweep(cache_dir: Path, entries: int) -> None:
    patched_first = ("from gevent import monkey; monkey.patch_all(); import runpy, sys; "
                     f"sys.argv = [{__file__!r}, '--sweep-probe', {str(cache_dir)!r}]; "
                     "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", patched_first], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    for line in done.stderr.splitlines()[-10:]:
        print(line)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"3. sweep over {entries} expired entries (real sweeper, gevent-patched process): "
          f"deleted {result['deleted']} in {result['seconds']:.1f} s; longest event-loop "
          f"stall {result['max_stall_ms']:.1f} ms, p99 {result['p99_stall_ms']:.2f} ms over "
          f"{result['ticks']} ticks of 1 ms (target < 20 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sweep-probe", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sweep_probe:
        sweep_probe(args.sweep_probe)
        return
    from bridge.serve.processes import start_standin

    workdir = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    standin = start_standin(log_dir=workdir)
    try:
        bench_memory(standin.url, workdir, args.duration, args.connections)
        bench_stage_cost(standin.url, workdir)
        bench_disk(standin.url, workdir, workdir / "disk-cache", args.entries)
        bench_sweep(workdir / "disk-cache", args.entries)
    finally:
        standin.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
