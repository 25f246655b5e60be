"""The speed of the bridge in one command (issue 29): `make bench`, or

    python bench/speed_bench.py [--passes N] [--duration S] [--only 1,2,3]

1. The issue's table, measured side by side in one run: the bridge (defaults, think
   filter on, 2 gevent workers) against the bare stack (a Flask + `requests` proxy,
   `bench/reference_proxy.py`, and for the memory hit a Flask dict view,
   `bench/bare_view.py`, 2 gevent workers each), in front of nginx answering canned
   OpenAI-compatible answers with a `<think>` block (written by this script into a
   temporary directory: a ~941 B `chat.completion`, and a stream of 20
   `chat.completion.chunk` frames + `data: [DONE]`; nginx can't read `"stream": true`,
   so one port answers JSON and another SSE). Load: `bench/loadgen.py` (wrk, 64
   connections), `--passes` x `--duration` s per target, the two targets back to back
   in each pass, in turn first, a warm-up before each run; medians over the passes, and
   as the ratio the median of the passes' own ratios (throughput here drifts by a fifth
   from one run to the next: paired runs, many times, are what stays put). Then the
   streaming time to the first byte, and the goals of issue 29, met or MISSED.
2. The in-process cost (µs) of one memory hit: through the whole pipeline, and a repeat
   through the whole WSGI app (the fast path), every counter and the access log kept
   (its lines to /dev/null, as a worker writes them to its log); the metric file writes and
   `stat` calls per hit, counted by wrapping them in this process.
3. What each feature landed with issues 22-28 costs on the miss path, in process (CPU
   µs per request, best of several rounds, the app of `create_app(settings)` against the
   nginx upstream, each configuration in a process of its own): with the feature off,
   the time spent in its own modules (cProfile), as a share of the request; with it on,
   the CPU it adds over off; beside the figure its issue's closing note gave.

Needs nginx and wrk (`apt-get install nginx wrk`). Every server runs on free loopback
ports and is stopped by its PID; load runs are bounded in time. Run it alone on the
machine (`flock /tmp/bench.lock make bench` where benches share one).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import http.client
import json
import logging
import math
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cache_bench import start_bare_view, wsgi_request  # noqa: E402
from loadgen import load, machine_line, met, tool  # noqa: E402

from bridge.serve.processes import (  # noqa: E402
    LOOPBACK,
    Process,
    free_port,
    start_bridge,
    start_server,
)

CHAT = "/v1/chat/completions"
MODEL = "deepseek-r1:7b"
DAY_MS = "86400000"
CONNECTIONS = 64
# issue 29's goals
MISS_RATIO_GOAL = 0.95  # of the bare proxy's req/s, p99 no worse than its
HIT_RATIO_GOAL = 1.3  # of the bare dict view's req/s
HIT_P99_GOAL_MS = 15.0
HIT_COST_GOAL_US = 35.0
FEATURE_OFF_GOAL = 0.01  # of the miss path
BATCH = 16  # repeats answered in one turn of a worker's event loop, for part 2's batched case

# --- the canned upstream -------------------------------------------------------------------

THINK = (
    "<think>\nThe user asks why the sky is blue. The answer is Rayleigh scattering: "
    "shorter wavelengths scatter more strongly, roughly as one over the wavelength to the "
    "fourth power, off the nitrogen and oxygen molecules of the atmosphere, so blue light "
    "reaches the eye from every direction.\n</think>\n\n")
ANSWER = (
    "The sky looks blue because of Rayleigh scattering. Sunlight contains every colour, "
    "but air molecules scatter short (blue) wavelengths far more than long (red) ones. "
    "That scattered blue light reaches your eyes from all over the sky. At sunrise and "
    "sunset the light crosses much more air, most of the blue is scattered away, and reds "
    "and oranges remain.")
COMPLETION_ID, CREATED = "chatcmpl-417", 1764025200
FRAMES = 20


def canned_json() -> str:
    """A whole `chat.completion` (about 941 bytes) whose content starts with a think block."""
    return json.dumps({
        "id": COMPLETION_ID, "object": "chat.completion", "created": CREATED, "model": MODEL,
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": THINK + ANSWER},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 18, "completion_tokens": 152, "total_tokens": 170}},
        separators=(",", ":"))


def canned_sse(frames: int = FRAMES) -> str:
    """`frames` `chat.completion.chunk` frames and `data: [DONE]`: the role, the think
    block, the answer's words spread over the frames between, the finish."""
    words = ANSWER.split(" ")
    pieces = frames - 3  # role + think block first, finish last
    cut = [round(i * len(words) / pieces) for i in range(pieces + 1)]
    texts = [THINK] + [" ".join(words[cut[i]:cut[i + 1]]) + " " for i in range(pieces)]

    def frame(delta: dict, finish: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": COMPLETION_ID, "object": "chat.completion.chunk", "created": CREATED,
            "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]},
            separators=(",", ":")) + "\n\n"

    out = [frame({"role": "assistant", "content": ""})]
    out += [frame({"content": text}) for text in texts]
    out.append(frame({}, "stop"))
    return "".join(out) + "data: [DONE]\n\n"


def canned_embedding(dimensions: int = 384) -> str:
    """An OpenAI `/v1/embeddings` answer: the same vector for every text (for the
    semantic cache in part 3, whose questions differ in scope)."""
    vector = [round(math.sin(i + 1), 3) for i in range(dimensions)]
    return json.dumps({"object": "list", "model": "bench-embed", "data": [
        {"object": "embedding", "index": 0, "embedding": vector}],
        "usage": {"prompt_tokens": 20, "total_tokens": 20}}, separators=(",", ":"))


def request_body(stream: bool) -> str:
    """The chat request of the load (as the issue's table was measured)."""
    return json.dumps({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in plain English."},
            {"role": "user", "content": "Why is the sky blue? Explain it in three sentences "
                                        "for a curious ten year old."}],
        "temperature": 0, "max_tokens": 256, "stream": stream}, separators=(",", ":"))


# what every load request carries besides the JSON content type: a client's key, as SDKs send
HEADERS = {"Authorization": "Bearer sk-bench-dummy"}


def _nginx_string(text: str) -> str:
    """`text` as a single-quoted nginx string (nginx reads \\n in it as a newline)."""
    assert "$" not in text, "nginx would read $ as a variable"
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    assert len(escaped) < 4000, "nginx takes at most 4 KB in one token"
    return "'" + escaped + "'"


def _nginx_answer(text: str) -> str:
    """The directives of a location answering `text`: `return 200 '…'`, or, for a text
    longer than one nginx token may be (4 KB), its halves in two variables (split
    between SSE events) joined by the `return`."""
    if len(text) < 3000:
        return f"return 200 {_nginx_string(text)};"
    events = text.split("\n\n")
    half = len(events) // 2
    first, second = "\n\n".join(events[:half]) + "\n\n", "\n\n".join(events[half:])
    return (f"set $first {_nginx_string(first)}; set $second {_nginx_string(second)}; "
            'return 200 "$first$second";')


NGINX_CONF = """# written by bench/speed_bench.py: a private instance, loopback only
worker_processes 2;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {{
        listen {host}:{json_port};
        location = {chat} {{ default_type application/json; {json} }}
        location = /v1/embeddings {{ default_type application/json; {embedding} }}
        location / {{ return 404; }}
    }}
    server {{
        listen {host}:{sse_port};
        location = {chat} {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            {sse}
        }}
        location / {{ return 404; }}
    }}
}}
"""


class Upstream:
    """nginx answering the canned JSON on `json_url` and the canned SSE on `sse_url`."""

    def __init__(self, work: Path):
        self.work = work / "nginx"
        (self.work / "tmp").mkdir(parents=True)
        json_port, sse_port = free_port(), free_port()
        (self.work / "nginx.conf").write_text(NGINX_CONF.format(
            work=self.work, host=LOOPBACK, json_port=json_port, sse_port=sse_port, chat=CHAT,
            json=_nginx_answer(canned_json()), sse=_nginx_answer(canned_sse()),
            embedding=_nginx_answer(canned_embedding())))
        self.json_url = f"http://{LOOPBACK}:{json_port}"
        self.sse_url = f"http://{LOOPBACK}:{sse_port}"
        cmd = ["nginx", "-p", str(self.work), "-c", str(self.work / "nginx.conf"),
               "-e", str(self.work / "error.log")]
        # any answer to the probe (a 404) means it is up; SIGTERM: nginx's fast stop
        self.process = start_server(cmd, self.json_url, "/", log_dir=work)
        start_server_wait(self.sse_url)

    def stop(self) -> None:
        self.process.stop()


def start_server_wait(url: str, seconds: float = 10.0) -> None:
    """Wait until `url` answers (the second port of a process already up)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            post(url, request_body(True))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- HTTP helpers ------------------------------------------------------------------------


def post(url: str, body: str, path: str = CHAT) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    with contextlib.closing(http.client.HTTPConnection(parts.hostname, parts.port,
                                                       timeout=30)) as conn:
        conn.request("POST", path, body, {"Content-Type": "application/json", **HEADERS})
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())


def check_filtered(url: str, stream: bool) -> bytes:
    """One answer of the bridge at `url`: 200, the upstream's answer relayed, the think
    block removed."""
    status, _, body = post(url, request_body(stream))
    assert status == 200, (status, body[:300])
    assert b"<think>" not in body and b"Rayleigh" in body, body[:300]
    if stream:
        assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]
        assert b"chat.completion.chunk" in body, body[:300]
    else:
        content = json.loads(body)["choices"][0]["message"]["content"]
        assert content.startswith("The sky looks blue"), content[:100]
    return body


def warm_memory_hit(url: str) -> str:
    """Repeat the request until both workers answer it from memory; returns the last
    `x-cache` seen."""
    deadline = time.monotonic() + 30
    while True:
        seen = [post(url, request_body(False))[1].get("x-cache", "") for _ in range(20)]
        if seen.count("HIT-MEMORY") == 20 or time.monotonic() > deadline:
            return seen[-1]
        time.sleep(0.2)


# --- 1. the table ----------------------------------------------------------------------------


def start_reference(upstream_url: str, work: Path) -> Process:
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2",
           "--worker-connections", "2000", "--keep-alive", "75",
           "-b", f"{LOOPBACK}:{port}", "--chdir", str(ROOT / "bench"), "reference_proxy:app"]
    return start_server(cmd, f"http://{LOOPBACK}:{port}", "/health",
                        env={"REFERENCE_UPSTREAM": upstream_url}, log_dir=work)


def measure(targets: dict[str, str], body: str, args: argparse.Namespace) -> dict[str, dict]:
    """`args.passes` runs of each target, back to back within each pass (in turn first
    and last: A B, B A, ...), each after a warm-up; the median of each figure over the
    passes, and `ratio`: the median over the passes of each target's req/s over the
    first target's in the same pass. (This 2-core machine's throughput drifts by a fifth
    and more from one run of seconds to the next, for any server: a ratio of runs made
    side by side, many times over, is what stays put.)"""
    runs: dict[str, list[dict]] = {name: [] for name in targets}
    order = list(targets.items())
    for index in range(args.passes):
        for name, url in (order if index % 2 == 0 else order[::-1]):
            load(url + CHAT, body, CONNECTIONS, args.warmup, HEADERS)
            runs[name].append(load(url + CHAT, body, CONNECTIONS, args.duration, HEADERS))
    first = runs[order[0][0]]
    return {name: {"rps": statistics.median(run["rps"] for run in done),
                   "p99_ms": statistics.median(run["p99_ms"] for run in done),
                   "passes": [run["rps"] for run in done],
                   "ratio": statistics.median(run["rps"] / reference["rps"]
                                              for run, reference in zip(done, first, strict=True)),
                   "errors": sum(run["errors"] + run["non2xx"] for run in done)}
            for name, done in runs.items()}


def time_to_first_byte(urls: dict[str, str], rounds: int) -> dict[str, float]:
    """Sequential streams on kept-alive connections, the targets interleaved: the median
    seconds from sending the request to the first body byte."""
    conns = {name: http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port,
                                              timeout=30) for name, url in urls.items()}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    body = request_body(True)
    for round_ in range(rounds + 10):
        for name, conn in conns.items():
            started = time.perf_counter()
            conn.request("POST", CHAT, body, {"Content-Type": "application/json", **HEADERS})
            response = conn.getresponse()
            first = response.read1(65536)
            elapsed = time.perf_counter() - started
            rest = response.read()
            assert first and (first + rest).rstrip().endswith(b"[DONE]"), name
            if round_ >= 10:  # the first rounds open pools
                samples[name].append(elapsed)
    for conn in conns.values():
        conn.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def row_line(label: str, bare: dict, bridge: dict) -> str:
    ratio = bridge["ratio"]
    return (f"| {label:42} | {bare['rps']:10,.0f} | {bare['p99_ms']:6.1f} | "
            f"{bridge['rps']:12,.0f} | {bridge['p99_ms']:6.1f} | {ratio:5.2f} |")


def part_table(upstream: Upstream, work: Path, args: argparse.Namespace) -> None:
    bridge_flags = ("--upstream-api", "openai", "--state-dir", str(work / "state"))
    print(f"1. bridge vs the bare stack, {tool()} {CONNECTIONS} connections, {args.passes} "
          f"passes x {args.duration:g} s per target (each after a {args.warmup:g} s "
          "warm-up), the two back to back in each pass (in turn first), medians; ratio: "
          "the median of the passes' ratios; 2 gevent workers each")
    print(f"   upstream: nginx, canned answers with a <think> block ({len(canned_json())} B "
          f"JSON on {upstream.json_url}, {FRAMES} SSE frames + [DONE] on "
          f"{upstream.sse_url})")
    print(f"   bridge: deepseek-ollama-bridge -w 2 {' '.join(bridge_flags[:2])} -o <nginx> "
          "(defaults: think filter on); memory hit: + --enable-cache --cache-ttl "
          f"{DAY_MS} --cache-hot-threshold 1")
    print("   bare: bench/reference_proxy.py (Flask + requests) for misses, "
          "bench/bare_view.py (Flask dict view) for the memory hit", flush=True)
    rows: dict[str, tuple[dict, dict]] = {}
    ttfb: dict[str, float] = {}
    for label, stream, upstream_url in (("non-stream miss", False, upstream.json_url),
                                        ("stream miss (20 SSE frames, think block)", True,
                                         upstream.sse_url)):
        with start_reference(upstream_url, work) as bare, \
                start_bridge(*bridge_flags, upstream=upstream_url, workers=2,
                             log_dir=work) as bridge:
            check_filtered(bridge.url, stream)
            results = measure({"bare": bare.url, "bridge": bridge.url}, request_body(stream),
                              args)
            if stream:
                ttfb = time_to_first_byte({"nginx direct": upstream_url, "bare": bare.url,
                                           "bridge": bridge.url}, args.ttfb_requests)
        rows[label] = (results["bare"], results["bridge"])
    with start_bridge(*bridge_flags, "--enable-cache", "--cache-dir", str(work / "cache"),
                      "--cache-ttl", DAY_MS, "--cache-hot-threshold", "1",
                      upstream=upstream.json_url, workers=2, log_dir=work) as bridge:
        check_filtered(bridge.url, False)
        cache_status = warm_memory_hit(bridge.url)
        assert cache_status.startswith("HIT"), cache_status
        _, _, hit_body = post(bridge.url, request_body(False))
        with start_bare_view(hit_body, work) as bare:
            results = measure({"bare": bare.url, "bridge": bridge.url}, request_body(False),
                              args)
        rows["memory hit (x-cache: " + cache_status + ")"] = (results["bare"],
                                                              results["bridge"])

    print(f"\n| {'path':42} | bare req/s | p99 ms | bridge req/s | p99 ms | ratio |")
    print("|---|---|---|---|---|---|")
    for label, (bare, bridge) in rows.items():
        print(row_line(label, bare, bridge))
    print("\n   passes (req/s), errors + non-2xx, and each pass's ratio:")
    for label, (bare, bridge) in rows.items():
        print(f"   {label:42} bare {', '.join(f'{r:,.0f}' for r in bare['passes'])} "
              f"({bare['errors']}); bridge {', '.join(f'{r:,.0f}' for r in bridge['passes'])}"
              f" ({bridge['errors']}); "
              + ", ".join(f"{b / a:.2f}" for a, b in zip(bare["passes"], bridge["passes"],
                                                               strict=True)))
    if ttfb:
        direct = ttfb["nginx direct"]
        print(f"   stream time to first byte ({args.ttfb_requests} sequential streams each, "
              f"medians): nginx direct {direct * 1000:.2f} ms, bare +"
              f"{(ttfb['bare'] - direct) * 1000:.2f} ms, bridge "
              f"+{(ttfb['bridge'] - direct) * 1000:.2f} ms")

    print("\n   goals of issue 29:")
    for label, (bare, bridge) in rows.items():
        ratio = bridge["ratio"]
        if label.startswith("memory hit"):
            print(f"   memory hit: {ratio:.2f}x the bare view (goal >= {HIT_RATIO_GOAL}) "
                  f"{met(ratio >= HIT_RATIO_GOAL)}; p99 {bridge['p99_ms']:.1f} ms (goal <= "
                  f"{HIT_P99_GOAL_MS:g} ms) {met(bridge['p99_ms'] <= HIT_P99_GOAL_MS)}")
        else:
            print(f"   {label}: {ratio:.2f}x the bare proxy (goal >= {MISS_RATIO_GOAL}) "
                  f"{met(ratio >= MISS_RATIO_GOAL)}; p99 {bridge['p99_ms']:.1f} ms vs bare "
                  f"{bare['p99_ms']:.1f} ms (goal: no worse) "
                  f"{met(bridge['p99_ms'] <= bare['p99_ms'])}")


# --- in process: the app, and what a request costs ------------------------------------------


def in_process_app(upstream_url: str, work: Path, *flags: str):
    """The bridge's WSGI app in this process (`create_app`), pointed at `upstream_url`
    with `flags`, its state in `work`; its log lines formatted, redacted and written to
    /dev/null, as a worker writes them to its log."""
    from bridge.core import settings as bridge_settings
    from bridge.web.app import create_app

    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    app = create_app(bridge_settings.load(["--upstream-api", "openai", "-o", upstream_url,
                                           "--state-dir", str(state), *flags]))
    for handler in logging.getLogger("bridge").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the process
    return app


def cpu_us(work: Callable[[], object], requests: int, rounds: int,
           yield_every: int = 1) -> float:
    """CPU µs of this process per call of `work`, the best of `rounds` runs of
    `requests` calls; the event loop is given a turn (`gevent.sleep(0)`: what the
    bridge defers to the end of a turn runs) after every `yield_every` calls."""
    import gevent

    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for index in range(requests):
            work()
            if (index + 1) % yield_every == 0:
                gevent.sleep(0)
        best = min(best, (time.process_time() - start) / requests * 1e6)
    return best


@contextlib.contextmanager
def counting_updates() -> Iterator[tuple[collections.Counter, list[int]]]:
    """Count, in this process, every write of a Prometheus value to its metric file (a
    counter's or a gauge's value, a histogram's sum and bucket: what an update costs, a
    lock and an mmap write each), by the file's kind, and every `os.stat` call made
    meanwhile. The values are multiprocess ones here (`in_process_app`), as in a worker."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: collections.Counter = collections.Counter()
    stats = [0]
    real_write = MmapedDict.write_value

    def counted_write(self, *args, **kwargs):
        counts[os.path.basename(self._fname).split("_")[0] + " write"] += 1
        return real_write(self, *args, **kwargs)

    real_stat = os.stat

    def counted_stat(*args, **kwargs):
        stats[0] += 1
        return real_stat(*args, **kwargs)

    MmapedDict.write_value = counted_write
    os.stat = counted_stat
    try:
        yield counts, stats
    finally:
        os.stat = real_stat
        MmapedDict.write_value = real_write


# --- 2. the in-process cost of a memory hit ----------------------------------------------------


def part_hit_cost(upstream: Upstream, work: Path, requests: int, rounds: int) -> None:
    from bridge.core.exchange import Exchange

    raw = request_body(False).encode()
    app = in_process_app(upstream.json_url, work, "--enable-cache", "--cache-dir",
                         str(work / "hit-cache"), "--cache-ttl", DAY_MS)
    statuses = [wsgi_request(app, raw, headers=HEADERS)[1].get("x-cache") for _ in range(3)]
    assert statuses[0] == "MISS" and statuses[-1] == "HIT-MEMORY", statuses
    pipeline = app.extensions["bridge.pipeline"]

    def through_pipeline() -> None:
        ex = Exchange(surface="openai", endpoint="chat", method="POST", path=CHAT, query="",
                      headers={"content-type": "application/json",
                               "authorization": HEADERS["Authorization"]},
                      body=raw, request_id="bench", payload=json.loads(raw))
        pipeline.handle(ex)
        assert ex.cache_status == "HIT-MEMORY", ex.cache_status
        ex.close()

    def repeat() -> None:
        wsgi_request(app, raw, headers=HEADERS)

    figures = {"pipeline": cpu_us(through_pipeline, requests, rounds),
               "repeat": cpu_us(repeat, requests, rounds),
               "repeat, batched": cpu_us(repeat, requests, rounds, yield_every=BATCH)}
    counted = {}
    for name, run, every in (("pipeline", through_pipeline, 1), ("repeat", repeat, 1),
                             ("repeat, batched", repeat, BATCH)):
        with counting_updates() as (counts, stats):
            for index in range(1000):
                run()
                if (index + 1) % every == 0:
                    gevent_turn()
        counted[name] = (sum(counts.values()) / 1000, stats[0], counts)
    stages = ", ".join(stage.name for stage in pipeline.stages)
    values = "multiprocess (mmap files, as in a worker)" if os.environ.get(
        "PROMETHEUS_MULTIPROC_DIR") else "in memory"
    print(f"\n2. one memory hit in this process, CPU µs per request (best of {rounds} x "
          f"{requests}; the access log on, its lines to /dev/null; metric values {values}):")
    print(f"   through the whole pipeline ({stages}; the issue's 78 µs was this figure of "
          f"cache_bench.py): {figures['pipeline']:.1f} µs (goal <= {HIT_COST_GOAL_US:g} µs) "
          f"{met(figures['pipeline'] <= HIT_COST_GOAL_US)}; "
          f"{counted['pipeline'][0]:.1f} metric file writes per hit, {counted['pipeline'][1]} "
          "os.stat calls in 1000 hits")
    print(f"   a repeat through the whole WSGI app (answered before Flask; the loop turns "
          f"after each, so each repeat's events are emitted alone): {figures['repeat']:.1f} "
          f"µs (goal <= {HIT_COST_GOAL_US:g} µs) {met(figures['repeat'] <= HIT_COST_GOAL_US)}; "
          f"{counted['repeat'][0]:.1f} metric file writes per hit, {counted['repeat'][1]} os.stat "
          "calls in 1000 hits")
    print(f"   the same, the loop turning after every {BATCH} repeats (their events added "
          f"up, as under load): {figures['repeat, batched']:.1f} µs; "
          f"{counted['repeat, batched'][0]:.1f} metric file writes per hit")
    detail = ", ".join(f"{name} {count / 1000:.1f}"
                       for name, count in sorted(counted["repeat"][2].items()))
    print(f"   writes per repeat by kind: {detail or 'none'}")


def gevent_turn() -> None:
    import gevent

    gevent.sleep(0)


# --- 3. what each feature costs on the miss path ---------------------------------------------


def distinct_question(n: int) -> bytes:
    """A chat request of its own scope (its system prompt numbered, in this process): a
    miss of the exact cache and of the semantic one."""
    body = json.loads(request_body(False))
    body["messages"][0]["content"] += f" (conversation {os.getpid()}-{n})"
    return json.dumps(body).encode()


def anthropic_request(n: int) -> bytes:
    return json.dumps({"model": MODEL, "max_tokens": 256, "system": "You are a concise "
                       "assistant. Answer in plain English.", "messages": [
                           {"role": "user", "content": "Why is the sky blue? Explain it in "
                            "three sentences for a curious ten year old."}]}).encode()


BODIES: dict[str, Callable[[int], bytes]] = {
    "chat": lambda n: request_body(False).encode(), "distinct": distinct_question,
    "anthropic": anthropic_request}


@dataclass
class Way:
    """How requests go in one measurement: the app's flags, the path, and the body of the
    n-th request (a name of `BODIES`)."""

    flags: tuple[str, ...] = ()
    path: str = CHAT
    body: str = "chat"


@dataclass
class Feature:
    name: str
    packages: tuple[str, ...]  # under bridge/
    off: Way
    on: Way | None  # None: the feature has no switch (its modules are measured on `off`)
    stated: str = ""  # the figure its issue states, and where


def features(work: Path, sink_url: str) -> list[Feature]:
    from lua_bench import EMPTY_HOOKS

    script = work / "empty-hooks.lua"
    script.write_text(EMPTY_HOOKS)

    def cache(name: str) -> tuple[str, ...]:
        return ("--enable-cache", "--cache-dir", str(work / name))

    return [
        Feature("usage ledger", ("usage",), Way(("--disable-usage-ledger",)), Way(),
                "6.25 µs to record an exchange, flushes off the loop (issue 28, "
                "usage_bench.py)"),
        Feature("budgets", ("budgets",), Way(), Way(("--budget-tokens", str(10**12))),
                "1.59 µs per budget check (issue 28, usage_bench.py)"),
        Feature("request log", ("console",), Way(("--request-log-size", "0")), Way(),
                "about 5 µs per record (issue 28, console_bench.py)"),
        Feature("identity + entitlement", ("identity",), Way(), None,
                "4.44 µs per hit, principal + entitlement (issue 22, identity_bench.py)"),
        Feature("surfaces + translation (Anthropic /v1/messages)", ("surfaces",), Way(),
                Way(path="/v1/messages", body="anthropic"),
                "anthropic -> openai +86 µs request + whole answer (issue 26, "
                "translation_bench.py)"),
        Feature("semantic cache (cache on, distinct questions)", ("semantic_cache",),
                Way(cache("cache-off"), body="distinct"),
                Way((*cache("cache-on"), "--semantic-cache-model", "bench-embed"),
                    body="distinct"),
                "lookup p50 0.28 ms at 1k entries, embedding call excluded (issue 27, "
                "semantic_bench.py)"),
        Feature("Lua (empty hooks)", ("lua",), Way(),
                Way(("--enable-luajit", "--luajit-script", str(script))),
                "24.2 µs median, both empty hooks (issue 12, lua_bench.py)"),
        Feature("OpenTelemetry tracing", ("tracing",), Way(),
                Way(("--otlp-endpoint", sink_url)),
                "+226 µs CPU, 3 spans batched (issue 28, tracing_bench.py)"),
    ]


class Measured:
    """An app of `way` in this process and its requests."""

    def __init__(self, upstream_url: str, work: Path, way: Way):
        self.app = in_process_app(upstream_url, work, *way.flags)
        self.way, self.count = way, 0
        status, _, body = self.request()
        assert status.startswith("200") and b"<think>" not in body, (status, body[:300])

    def request(self) -> tuple[str, dict[str, str], bytes]:
        self.count += 1
        return wsgi_request(self.app, BODIES[self.way.body](self.count), self.way.path,
                            {**HEADERS, "anthropic-version": "2023-06-01"})

    def cpu_us(self, requests: int, rounds: int) -> float:
        micros = cpu_us(self.request, requests, rounds)
        status, headers, _ = self.request()
        assert status.startswith("200") and not headers.get("x-cache", "").startswith(
            "HIT"), ("not a miss", status, headers)
        return micros

    def profiled(self, requests: int, packages: tuple[str, ...]
                 ) -> tuple[float, float, list[str]]:
        """µs per request spent in functions of `packages` (their own time, cProfile),
        the profiled request's whole time, and the three functions of `packages` that
        took most."""
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            self.request()
            gevent_turn()
        profiler.disable()
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        prefixes = tuple(str(ROOT / "bridge" / package) + os.sep for package in packages)
        total = sum(row[2] for row in stats.values())
        mine = sorted(((row[2], filename, line, function)
                       for (filename, line, function), row in stats.items()
                       if filename.startswith(prefixes)), reverse=True)
        own = sum(row[0] for row in mine)
        top = [f"{os.path.relpath(filename, ROOT / 'bridge')}:{line} {function} "
               f"{seconds / requests * 1e6:.1f}" for seconds, filename, line, function in mine[:3]]
        return own / requests * 1e6, total / requests * 1e6, top


def measure_way(job: dict) -> dict:
    """(In a process of its own, so that no other app's listeners and globals are in it.)
    The CPU µs per request of `job`'s way, and with `packages`, its profile."""
    way = Way(tuple(job["flags"]), job["path"], job["body"])
    measured = Measured(job["upstream"], Path(job["work"]), way)
    result: dict = {"cpu_us": measured.cpu_us(job["requests"], job["rounds"])}
    if job.get("packages"):
        result["own"], result["total"], result["top"] = measured.profiled(
            job["requests"], tuple(job["packages"]))
    measured.app.extensions["bridge.pipeline"].stop()
    return result


def in_own_process(upstream: Upstream, work: Path, way: Way, requests: int, rounds: int,
                   packages: tuple[str, ...] = ()) -> dict:
    job = {"flags": list(way.flags), "path": way.path, "body": way.body,
           "upstream": upstream.json_url, "work": str(work), "requests": requests,
           "rounds": rounds, "packages": list(packages)}
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("OTEL_", "PROMETHEUS_MULTIPROC_DIR", "BRIDGE_"))}
    env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every process: less spread
    done = subprocess.run([sys.executable, __file__, "--measure-way", json.dumps(job)],
                          capture_output=True, text=True, env=env, cwd=work, timeout=600)
    if done.returncode:
        raise RuntimeError(f"measuring {way} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def part_features(upstream: Upstream, work: Path, requests: int, rounds: int,
                  repeats: int) -> None:
    from tracing_bench import Sink

    miss = in_own_process(upstream, work, Way(), requests, rounds)["cpu_us"]
    print(f"\n3. the miss path in process (create_app, WSGI, a non-stream chat to nginx "
          f"over loopback, the access log on to /dev/null; each app in a process of its "
          f"own), CPU µs per request, best of {rounds} x {requests}: {miss:.0f} µs with "
          "defaults")
    print(f"   per feature: off = its modules' own time (cProfile tottime of bridge/<package>/"
          f", over {requests} requests) per request, and its share of the profiled "
          f"request's whole time; on = the CPU it adds over off (the best of {repeats} "
          "processes each, off and on alternated; spread = how far the off processes' "
          "figures lie apart, the noise of the difference)")
    print(f"   | {'feature':48} | off: µs | share | goal <= 1 % | on: +µs | spread | its "
          "issue's figure |")
    print("   |---|---|---|---|---|---|---|")
    where = []
    for feature in features(work, Sink().url):
        offs, ons = [], []
        for repeat in range(repeats):
            offs.append(in_own_process(upstream, work, feature.off, requests, rounds,
                                       feature.packages if repeat == 0 else ()))
            if feature.on is not None:
                ons.append(in_own_process(upstream, work, feature.on, requests, rounds))
        off = offs[0]
        share = off["own"] / off["total"]
        if off["own"] >= 1.0:
            where.append(f"   {feature.name}, off: {'; '.join(off['top'])} µs")
        off_cpu = [run["cpu_us"] for run in offs]
        added = "no switch" if not ons else \
            f"{min(run['cpu_us'] for run in ons) - min(off_cpu):+.0f}"
        print(f"   | {feature.name:48} | {off['own']:7.1f} | {share * 100:4.1f} % | "
              f"{met(share <= FEATURE_OFF_GOAL):11} | {added:>7} | "
              f"{max(off_cpu) - min(off_cpu):6.0f} | {feature.stated} |", flush=True)
    if where:
        print("   where the time of a feature that is off goes (its 3 costliest functions, "
              "µs per request):")
        print("\n".join(where))


# --- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="speed-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--duration", type=int, default=3, help="seconds per load run")
    parser.add_argument("--warmup", type=int, default=1,
                        help="seconds of the same load before each run (discarded)")
    parser.add_argument("--ttfb-requests", type=int, default=300)
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per round of the in-process parts")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of the in-process parts (the best is kept)")
    parser.add_argument("--feature-requests", type=int, default=300,
                        help="requests per round of part 3 (each a call to nginx)")
    parser.add_argument("--feature-repeats", type=int, default=3,
                        help="processes measuring each way of part 3 (the best is kept)")
    parser.add_argument("--only", default="1,2,3", help="the parts to run, e.g. 1,3")
    parser.add_argument("--measure-way", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_way:
        print(json.dumps(measure_way(json.loads(args.measure_way))))
        return 0
    parts = set(args.only.replace(",", ""))
    if not shutil.which("nginx") or not shutil.which("wrk"):
        print("speed_bench needs nginx and wrk: apt-get install nginx wrk", file=sys.stderr)
        return 1
    print(machine_line())
    print(f"load generator: {tool()} ({shutil.which('wrk')}); {sys.executable}")
    with workdir() as work:
        upstream = Upstream(work)
        try:
            if "1" in parts:
                part_table(upstream, work, args)
            if "2" in parts:
                part_hit_cost(upstream, work, args.requests, args.rounds)
            if "3" in parts:
                part_features(upstream, work, args.feature_requests, args.rounds,
                              args.feature_repeats)
        finally:
            upstream.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
