"""What the think filter costs: time to the first answer byte through the bridge with the
filter on and off, on streams whose answer comes after a reasoning block, and the
filter's own cost per chunk.

    python bench/think_filter_bench.py [--requests N] [--token-delay MS]

Starts the Ollama stand-in and three bridges (two with the filter, to show the noise
between instances, one with `--disable-think-filter`) as processes on free loopback
ports, and stops them at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.core.exchange import Frame  # noqa: E402
from bridge.core.reasoning import ThinkFilter  # noqa: E402
from bridge.serve.processes import start_bridge, start_standin  # noqa: E402
from bridge.think.stage import CHAT, ThinkCleaner, clean_frames  # noqa: E402

PROMPT = "Why is the sky blue?"
ANSWER_START = "Echo:"  # the stand-in's first answer token
# (model, stand-in think mode): an opening tag, and none (recognised by the model name)
STREAMS = [("qwen2.5", "tags"), ("deepseek-r1:7b", "tags-no-open")]


def first_answer_byte(url: str, model: str, think: str, token_delay: float) -> float:
    """Seconds from sending the request to the first SSE event carrying answer text."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": PROMPT}]})
    headers = {"Content-Type": "application/json", "X-Standin-Think": think,
               "X-Standin-Token-Delay": str(token_delay)}
    try:
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, headers)
        resp = conn.getresponse()
        first = None
        while line := resp.fp.readline():  # readline() on the chunked body: framing stays
            if first is None and b'"content":"' + ANSWER_START.encode() in line:
                first = time.perf_counter() - start
            if line.startswith(b"data: [DONE]"):
                break
        if first is None:
            raise RuntimeError(f"no answer in the stream of {model} ({think})")
        return first
    finally:
        conn.close()


def bench_ttfab(n: int, token_delay: float) -> None:
    standin = start_standin()
    bridges = {}
    try:
        # Two bridges with the filter on: their difference is the noise between instances.
        bridges["on"] = start_bridge(upstream=standin.url, workers=1)
        bridges["on, 2nd"] = start_bridge(upstream=standin.url, workers=1)
        bridges["off"] = start_bridge("--disable-think-filter", upstream=standin.url,
                                      workers=1)
        for model, think in STREAMS:
            times: dict[str, list[float]] = {name: [] for name in bridges}
            for bridge in bridges.values():  # warm up
                first_answer_byte(bridge.url, model, think, token_delay)
            for _ in range(n):  # interleaved, so drift hits all alike
                for name, bridge in bridges.items():
                    times[name].append(first_answer_byte(bridge.url, model, think,
                                                         token_delay))
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            print(f"time to first answer byte, {model} ({think}), {n} requests each, "
                  f"{token_delay * 1000:g} ms per token:")
            for name, values in times.items():
                p90 = sorted(values)[int(0.9 * (len(values) - 1))] * 1000
                print(f"  filter {name:8}: median {med[name]:8.3f} ms   p90 {p90:8.3f} ms")
            print(f"  on - off: {med['on'] - med['off']:+.3f} ms, ratio on/off "
                  f"{med['on'] / med['off']:.4f}; noise (on - on, 2nd): "
                  f"{med['on'] - med['on, 2nd']:+.3f} ms")
    finally:
        for bridge in bridges.values():
            bridge.stop()
        standin.stop()


def bench_per_chunk(rounds: int = 7) -> None:
    reasoning = [f" step{i}" for i in range(1000)]
    answer = [f" word{i}" for i in range(1000)]
    pieces = ["<th", "ink>\n", *reasoning, "\n</thi", "nk>\n\n", *answer]
    for label, starts_inside, feed in (("opening tag", False, pieces),
                                       ("no opening tag", True, pieces[2:])):
        best = float("inf")
        for _ in range(rounds):
            f = ThinkFilter(starts_inside)
            start = time.perf_counter()
            for piece in feed:
                f.feed(piece)
            f.finish()
            best = min(best, (time.perf_counter() - start) / len(feed))
        print(f"ThinkFilter.feed, {label}: {best * 1e6:.2f} µs per chunk")
    # The whole stage per SSE frame: parse, clean, re-encode changed frames.
    raw = [json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                       "model": "m", "choices": [{"index": 0, "delta": {"content": p},
                                                  "finish_reason": None}]}).encode()
           for p in pieces]
    best = float("inf")
    for _ in range(rounds):
        frames = [Frame(r) for r in raw]
        start = time.perf_counter()
        for _frame in clean_frames(ThinkCleaner(CHAT), iter(frames)):
            pass
        best = min(best, (time.perf_counter() - start) / len(frames))
    print(f"think-filter stage per SSE frame (JSON parse + clean + re-encode): "
          f"{best * 1e6:.2f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--token-delay", type=float, default=2.0, help="ms between tokens")
    args = parser.parse_args()
    bench_per_chunk()
    bench_ttfab(args.requests, args.token_delay / 1000)


if __name__ == "__main__":
    main()
