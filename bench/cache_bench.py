"""The cache's speed, measured in one run on 2 gevent workers:

1. memory hits: req/s and p50/p99 of the bridge answering from its memory tier, against a
   bare Flask view returning the same body from memory (both on 2 gunicorn gevent workers,
   measured alternately with `bench/loadgen.py`: wrk, or a gevent client without it), for
   a non-stream and a stream client of the same entry;
2. replay and assembly of a stored 2,000-frame stream, warm and from disk (in process);
3. disk hits with 1,000,000 entries on disk: latency p50/p99 through the bridge, and of
   the disk tier's lookup alone;
4. the longest stall of a worker's event loop while the sweeper deletes 1,000,000 expired
   entries (the real sweeper under gevent's monkey-patching, with a 1 ms ticker greenlet);
5. the same stall while this worker stores, claims and reads with four other processes
   writing the disk tier and a fifth holding a write transaction for 3 s;
6. the RSS of each of 2 workers with the memory tier full (`--cache-memory-bytes`).

Each part prints its targets (issue 11), the figures and whether each target is met.

    python bench/cache_bench.py [--entries N] [--duration S] [--connections C]
                                [--memory-bytes B] [--only PARTS]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
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

from loadgen import load, machine_line, met, percentile, tool  # noqa: E402 - imports nothing gevent must patch first

QUESTION = "Why is the sky blue?"
DAY_MS = "86400000"
HIT_RATIO_TARGET = 0.85      # memory hits: of the bare view's req/s
HIT_P99_TARGET_MS = 100.0    # memory hits: p99 at 64 connections
REPLAY_TARGET_MS = 2.0       # replay / assembly of a 2,000-frame stream
STALL_TARGET_MS = 10.0       # longest event-loop stall with writers and a held lock
SWEEP_STALL_TARGET_MS = 20.0
RSS_TARGET_MB = 150.0        # each worker with the memory tier full


def chat_body(question: str) -> dict:
    return {"model": "qwen3", "messages": [{"role": "user", "content": question}]}


def start_bare_view(body: bytes, workdir: Path, stream: bytes = b""):
    from bridge.serve.processes import LOOPBACK, free_port, start_server

    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    stream_file = workdir / "stream.sse"
    stream_file.write_bytes(stream)
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "--keep-alive", "5",
           "-b", f"{LOOPBACK}:{port}", "--chdir", str(ROOT / "bench"), "bare_view:app"]
    # any answer to the probe, even a 405, means it is up
    return start_server(cmd, f"http://{LOOPBACK}:{port}", "/health",
                        env={"BENCH_BODY_FILE": str(body_file),
                             "BENCH_STREAM_FILE": str(stream_file)}, log_dir=workdir)


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


def wsgi_environ(raw: bytes, path: str = "/v1/chat/completions",
                 headers: dict[str, str] | None = None) -> dict:
    """The WSGI environ of a POST of `raw` to `path`, as gunicorn makes it (`headers`:
    more request headers, by their HTTP names)."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path,
               "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(raw)),
               "wsgi.input": io.BytesIO(raw), "wsgi.url_scheme": "http",
               "wsgi.errors": sys.stderr, "wsgi.multithread": False,
               "wsgi.multiprocess": True, "wsgi.run_once": False}
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def wsgi_request(app, raw: bytes, path: str = "/v1/chat/completions",
                 headers: dict[str, str] | None = None) -> tuple[str, dict[str, str], bytes]:
    """One request through the WSGI `app` in this process, its answer read and closed
    as a server does: (status, headers with lower-case names, body)."""
    sent: list = []
    answer = app(wsgi_environ(raw, path, headers),
                 lambda status, response_headers, *exc_info: sent.extend(
                     (status, response_headers)))
    try:
        body = b"".join(answer)
    finally:
        close = getattr(answer, "close", None)
        if close is not None:
            close()
    return sent[0], {name.lower(): value for name, value in sent[1]}, body


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
        stream_body = {**body, "stream": True}
        _, hit_stream, _ = fresh_post(bridge.url, stream_body)
        bare_view = start_bare_view(hit_body, workdir, hit_stream)
        print(f"1. memory hits ({tool()}, {connections} connections, {seconds:g} s x {rounds} "
              f"rounds, 2 gevent workers each; {statuses.count('HIT-MEMORY')}/20 probes "
              f"HIT-MEMORY before the run)")
        for label, request, size in (("non-stream", json.dumps(body), len(hit_body)),
                                     ("stream", json.dumps(stream_body), len(hit_stream))):
            results: dict[str, list[dict]] = {"bare Flask view": [], "bridge memory hit": []}
            for _ in range(rounds):  # alternated, so drift and neighbours hit both alike
                results["bare Flask view"].append(load(bare_view.url + "/v1/chat/completions",
                                                       request, connections, seconds))
                results["bridge memory hit"].append(load(bridge.url + "/v1/chat/completions",
                                                         request, connections, seconds))
            print(f"   {label} client ({size} bytes):")
            summary = {}
            for name, runs in results.items():
                summary[name] = {key: statistics.median(run[key] for run in runs)
                                 for key in ("rps", "p50_ms", "p99_ms")}
                detail = ", ".join(f"{run['rps']:.0f}" for run in runs)
                print(f"     {name:18}: {summary[name]['rps']:8.0f} req/s (runs: {detail})  "
                      f"p50 {summary[name]['p50_ms']:6.2f} ms  "
                      f"p99 {summary[name]['p99_ms']:6.2f} ms  "
                      f"errors {sum(run['errors'] + run['non2xx'] for run in runs)}")
            bare, hit = summary["bare Flask view"], summary["bridge memory hit"]
            ratio = hit["rps"] / bare["rps"]
            print(f"     ratio bridge/bare: {ratio:.2f} of the req/s (target >= "
                  f"{HIT_RATIO_TARGET}) {met(ratio >= HIT_RATIO_TARGET)}; bridge p99 "
                  f"{hit['p99_ms']:.1f} ms (target <= {HIT_P99_TARGET_MS:g} ms) "
                  f"{met(hit['p99_ms'] <= HIT_P99_TARGET_MS)}; p50 x"
                  f"{hit['p50_ms'] / bare['p50_ms']:.2f}")
    finally:
        if bare_view is not None:
            bare_view.stop()
        bridge.stop()


# --- 2. replay and assembly of a long stored stream ----------------------------------------


def long_stream_entry(frames: int = 2000):
    """An entry like the stand-in's streams, `frames` answer words long, prepared as a
    store prepares it."""
    from bridge.cache import replay
    from bridge.cache.entry import Entry

    def chunk(delta: dict, finish: str | None = None, choices: bool = True) -> bytes:
        obj = {"id": "chatcmpl-462", "object": "chat.completion.chunk", "created": 1712345678,
               "model": "deepseek-r1:7b", "system_fingerprint": "fp_ollama",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
               if choices else []}
        if not choices:
            obj["usage"] = {"prompt_tokens": 9, "completion_tokens": frames,
                            "total_tokens": frames + 9}
        return json.dumps(obj, separators=(",", ":")).encode()

    raws = [chunk({"role": "assistant", "content": ""}),
            *(chunk({"content": f" word{i}"}) for i in range(frames)), chunk({}, "stop"),
            chunk({}, choices=False), b"[DONE]"]
    entry = Entry("openai", "chat", "deepseek-r1:7b", time.time(), codec="sse",
                  frames=tuple(raws))
    replay.prepare(entry)
    return entry


def bench_replay(frames: int = 2000, repeat: int = 30) -> None:
    """CPU of one replay (every frame out) and one assembly, warm and from disk (the
    stored bytes decoded first); one thread, so wall time is CPU time: best of `repeat`."""
    from bridge.cache import replay
    from bridge.cache.entry import decode_entry, encode_entry

    entry = long_stream_entry(frames)
    stored = encode_entry(entry)

    def replayed(source) -> None:
        for _ in replay.serve_entry(source(), replay.Shape(True, False), {}).frames:
            pass

    def assembled(source) -> None:
        replay.serve_entry(source(), replay.Shape(False, False), {}).finish()

    def best(run, source) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            run(source)
            times.append((time.perf_counter() - start) * 1000)
        return min(times)

    print(f"2. a stored {frames}-frame stream ({len(stored)} bytes stored), CPU per response "
          f"(best of {repeat}):")
    for label, run in (("replay", replayed), ("assembly", assembled)):
        for where, source in (("warm", lambda: entry), ("from disk", lambda: decode_entry(stored))):
            ms = best(run, source)
            print(f"   {label:8} {where:9}: {ms:6.2f} ms (target <= {REPLAY_TARGET_MS:g} ms) "
                  f"{met(ms <= REPLAY_TARGET_MS)}")
    start = time.perf_counter()
    decode_entry(stored)
    print(f"   (decoding the stored entry alone: {(time.perf_counter() - start) * 1000:.2f} ms)")


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

    print(f"3. disk hits with {entries} entries on disk")
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


def run_patched(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """This script with `argv` in a child process patched by gevent before anything else
    is imported, as a gunicorn gevent worker is."""
    patched_first = ("from gevent import monkey; monkey.patch_all(); import runpy, sys; "
                     f"sys.argv = [{__file__!r}, *{list(argv)!r}]; "
                     "runpy.run_path(sys.argv[0], run_name='__main__')")
    return subprocess.run([sys.executable, "-c", patched_first], capture_output=True,
                          text=True, check=True, cwd=ROOT, timeout=timeout)


def bench_sweep(cache_dir: Path, entries: int) -> None:
    done = run_patched("--sweep-probe", str(cache_dir))
    for line in done.stderr.splitlines()[-10:]:
        print(line)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    stall = result["max_stall_ms"]
    print(f"4. sweep over {entries} expired entries (real sweeper, gevent-patched process): "
          f"deleted {result['deleted']} in {result['seconds']:.1f} s; longest event-loop "
          f"stall {stall:.1f} ms, p99 {result['p99_stall_ms']:.2f} ms over "
          f"{result['ticks']} ticks of 1 ms (target < {SWEEP_STALL_TARGET_MS:g} ms) "
          f"{met(stall < SWEEP_STALL_TARGET_MS)}")


# --- 5. the event loop while other processes write ---------------------------------------------


ROUND_SECONDS = 0.04  # each probe greenlet's pace (8 of them: up to 200 rounds/s)
LONG_TICK_MS = 5.0  # a tick this much later than asked is explained part by part


class ThreadClocks:
    """CPU time and run-queue wait (runnable, but no CPU from the OS) of each thread of
    this process, from Linux's /proc/self/task/<tid>/schedstat (about 1 µs a read)."""

    def __init__(self) -> None:
        self.main = os.open("/proc/thread-self/schedstat", os.O_RDONLY)  # the loop's thread
        self.main_tid = int(os.readlink("/proc/thread-self").rsplit("/", 1)[1])
        self.tids: dict[int, int] = {}
        self.listed = 0.0

    @staticmethod
    def read(fd: int) -> tuple[float, float]:
        try:
            cpu_ns, wait_ns, _ = os.pread(fd, 100, 0).split()
        except (OSError, ValueError):  # a thread that ended
            return 0.0, 0.0
        return int(cpu_ns) / 1e6, int(wait_ns) / 1e6

    def others(self) -> tuple[float, float]:
        """Summed CPU and run-queue wait (ms) of the other threads (the writer thread)."""
        if time.monotonic() - self.listed > 0.05:  # threads come (lazily) and go
            self.listed = time.monotonic()
            for tid in os.listdir("/proc/self/task"):
                if int(tid) != self.main_tid and int(tid) not in self.tids:
                    with contextlib.suppress(OSError):
                        self.tids[int(tid)] = os.open(f"/proc/self/task/{tid}/schedstat",
                                                      os.O_RDONLY)
        cpu = wait = 0.0
        for fd in self.tids.values():
            thread_cpu, thread_wait = self.read(fd)
            cpu, wait = cpu + thread_cpu, wait + thread_wait
        return cpu, wait


def stall_ticker(gaps: list[float], running: list[bool], split: list[tuple]) -> None:
    """A greenlet waking every 1 ms: how late each wake-up is, is how long the loop stalled.
    For each tick later than `LONG_TICK_MS`, `split` gets its wall time (the 1 ms asked
    for included) and where it went (ms): the loop thread's own CPU, its run-queue wait
    (the OS ran other processes), the rest (asleep: in the timer's wait, for the GIL or
    in a system call), and the other threads' CPU and run-queue wait in the same tick."""
    import gevent

    clocks = ThreadClocks()
    last = time.perf_counter()
    cpu, wait = clocks.read(clocks.main)
    others = clocks.others()
    while running[0]:
        gevent.sleep(0.001)
        now = time.perf_counter()
        now_cpu, now_wait = clocks.read(clocks.main)
        now_others = clocks.others()
        gap = (now - last) * 1000 - 1.0
        gaps.append(gap)
        if gap > LONG_TICK_MS:
            own, queued = now_cpu - cpu, now_wait - wait
            split.append((gap + 1.0, own, queued, max(0.0, gap + 1.0 - own - queued),
                          now_others[0] - others[0], now_others[1] - others[1]))
        last, cpu, wait, others = now, now_cpu, now_wait, now_others


SPLIT_PARTS = ("loop's CPU", "loop runnable, no CPU", "loop asleep (GIL or syscall)",
               "other threads' CPU", "other threads runnable, no CPU")


def split_summary(split: list[tuple]) -> str:
    """The long ticks' time, part by part (summed over them, and the longest tick's)."""
    if not split:
        return f"no tick over {LONG_TICK_MS:g} ms"
    worst = max(split)
    total = [sum(tick[i] for tick in split) for i in range(6)]
    parts = "; ".join(f"{name} {total[i + 1]:.1f} (longest: {worst[i + 1]:.1f})"
                      for i, name in enumerate(SPLIT_PARTS))
    return (f"{len(split)} ticks over {LONG_TICK_MS:g} ms late, {total[0]:.1f} ms of wall "
            f"time in all (longest {worst[0]:.1f}), spent as (ms): {parts}")


def disk_writer(cache_dir: str, seconds: float) -> None:
    """Another process storing entries into the disk tier as fast as it can."""
    from bridge.cache.disk import DiskTier

    disk = DiskTier(cache_dir, 3600.0, 20_000).open()
    entry = long_stream_entry(20)
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        disk.put(f"writer-{os.getpid()}-{n % 5000}", entry)
        n += 1
    disk.close()


def lock_holder(cache_dir: str, seconds: float) -> None:
    """Another process holding the file's write lock for `seconds`, from 1.5 s on (once
    the probe has opened the file: opening writes the schema)."""
    from bridge.cache.disk import cache_file

    time.sleep(1.5)
    with contextlib.closing(sqlite3.connect(cache_file(cache_dir), isolation_level=None,
                                            timeout=30)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        time.sleep(seconds)
        conn.execute("COMMIT")


def writers_probe(cache_dir: str, seconds: float) -> None:
    """In a gevent-patched process: greenlets storing, claiming, releasing and reading
    through the real disk tier while a 1 ms ticker measures the loop."""
    import gevent

    from bridge.cache.disk import DiskTier

    disk = DiskTier(cache_dir, 3600.0, 20_000).open()
    entry = long_stream_entry(20)
    gaps: list[float] = []
    split: list[tuple] = []
    running = [True]
    ops = [0]

    def client(number: int) -> None:
        n = 0
        while running[0]:
            began = time.perf_counter()
            key = f"probe-{number}-{n % 500}"
            disk.claim(key, 15.0)
            disk.put(key, entry)
            disk.release(key)
            disk.get(key)
            ops[0] += 1
            n += 1
            # a worker serving requests, not a loop saturated by stores: one round per
            # ROUND_SECONDS at most, so that tiers of different speeds do the same work
            gevent.sleep(max(0.002, began + ROUND_SECONDS - time.perf_counter()))

    cpu = time.process_time()
    tick = gevent.spawn(stall_ticker, gaps, running, split)
    clients = [gevent.spawn(client, number) for number in range(8)]
    gevent.sleep(seconds)
    running[0] = False
    gevent.joinall([tick, *clients], timeout=30)
    disk.close()
    print(json.dumps({"max_stall_ms": max(gaps), "p99_stall_ms": percentile(gaps, 0.99),
                      "long_ticks": split_summary(split), "ticks": len(gaps),
                      "rounds": ops[0], "cpu_seconds": time.process_time() - cpu}))


def bench_writers(workdir: Path, seconds: float = 8.0, lock_seconds: float = 3.0) -> None:
    cache_dir = workdir / "writers-cache"
    from bridge.cache.disk import DiskTier

    print(f"5. {machine_line()}")
    DiskTier(cache_dir, 3600.0, 20_000).open().close()  # the file and its schema
    script = [sys.executable, __file__]
    writers = [subprocess.Popen([*script, "--disk-writer", str(cache_dir), str(seconds + 2)],
                                cwd=ROOT) for _ in range(4)]
    holder = None
    try:
        time.sleep(0.5)  # the writers are writing; the holder takes the lock 1.5 s into the probe
        holder = subprocess.Popen([*script, "--lock-holder", str(cache_dir), str(lock_seconds)],
                                  cwd=ROOT, stdout=subprocess.PIPE, text=True)
        done = run_patched("--writers-probe", str(cache_dir), str(seconds),
                           timeout=seconds + 120)
    finally:
        for process in [*writers, *([holder] if holder else [])]:
            try:
                process.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                process.kill()
    result = json.loads(done.stdout.strip().splitlines()[-1])
    stall = result["max_stall_ms"]
    print(f"   event loop of a gevent-patched worker storing, claiming and reading (8 greenlets, "
          f"{result['rounds']} rounds in {seconds:g} s, at most one per "
          f"{ROUND_SECONDS * 1000:g} ms "
          f"each, {result['cpu_seconds'] * 1e6 / max(1, result['rounds']):.0f} µs of the "
          f"process's CPU per round) while 4 processes write the disk tier "
          f"and a 5th holds a write transaction for {lock_seconds:g} s: longest stall "
          f"{stall:.1f} ms, p99 {result['p99_stall_ms']:.2f} ms over {result['ticks']} ticks "
          f"(target < {STALL_TARGET_MS:g} ms) {met(stall < STALL_TARGET_MS)}")
    print(f"   {result['long_ticks']}")


# --- 6. RSS of the workers with the memory tier full ----------------------------------------------


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_rss(standin_url: str, workdir: Path, memory_bytes: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from bridge.cache import replay
    from bridge.cache.disk import DiskTier
    from bridge.cache.keys import cache_key
    from bridge.cache.memory import entry_size
    from bridge.serve.processes import start_bridge

    cache_dir = workdir / "rss-cache"
    words = " ".join(f"word{i}" for i in range(300))  # the stand-in echoes it: 300+ frames

    def body(n: int) -> dict:
        return {**chat_body(f"{n} {words}"), "stream": True}

    with start_bridge("--enable-cache", "--cache-dir", str(cache_dir), "--cache-ttl", DAY_MS,
                      "--cache-memory-bytes", str(memory_bytes), "--cache-memory-entries",
                      "1000000", upstream=standin_url, workers=2, log_dir=workdir) as bridge:
        fresh_post(bridge.url, body(0))
        tier = DiskTier(cache_dir, 86400.0, 10**9).open()
        entry = tier.get(cache_key("openai", "chat", body(0), upstream=standin_url))
        tier.close()
        assert entry is not None
        replay.prepare(entry)
        size = entry_size(entry)
        count = int(2.5 * 2 * memory_bytes / size)  # each worker gets well over its budget

        def fill(start: int) -> None:
            with contextlib.closing(connect(bridge.url)) as conn:
                for n in range(start, count, 16):
                    post(conn, body(n))

        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(fill, range(1, 17)))
        took = time.perf_counter() - started
        workers = sorted(descendants(bridge.pid))
        sizes = {pid: rss_mb(pid) for pid in [bridge.pid, *workers]}
    print(f"6. RSS with the memory tier full: --cache-memory-bytes {memory_bytes} "
          f"({memory_bytes / 2**20:.0f} MiB), entries of {size} bytes counted, {count} "
          f"streamed misses stored in {took:.1f} s:")
    for pid, megabytes in sizes.items():
        role = "master" if pid == bridge.pid else "worker"
        target = "" if role == "master" else (
            f" (target < {RSS_TARGET_MB:g} MB) {met(megabytes < RSS_TARGET_MB)}")
        print(f"   {role} {pid}: {megabytes:.0f} MB{target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--memory-bytes", type=int, default=64 << 20,
                        help="the memory tier's budget for the RSS part (the default's)")
    parser.add_argument("--only", default="123456", help="the parts to run, e.g. 125")
    parser.add_argument("--sweep-probe", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--writers-probe", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--disk-writer", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--lock-holder", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sweep_probe:
        sweep_probe(args.sweep_probe)
        return
    for name, run in (("writers_probe", writers_probe), ("disk_writer", disk_writer),
                      ("lock_holder", lock_holder)):
        if getattr(args, name):
            directory, seconds = getattr(args, name)
            run(directory, float(seconds))
            return
    from bridge.serve.processes import start_standin

    workdir = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    standin = start_standin(log_dir=workdir)
    try:
        if "1" in args.only:
            bench_memory(standin.url, workdir, args.duration, args.connections)
        if "2" in args.only:
            bench_replay()
        if "3" in args.only or "4" in args.only:
            bench_disk(standin.url, workdir, workdir / "disk-cache", args.entries)
            bench_sweep(workdir / "disk-cache", args.entries)
        if "5" in args.only:
            bench_writers(workdir)
        if "6" in args.only:
            bench_rss(standin.url, workdir, args.memory_bytes)
    finally:
        standin.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
