"""What routing costs (`--upstreams`): the routing work per request in process (matching,
balancing, the route's bookkeeping, the upstream's URL, key and model name), and the
miss-path throughput of a bridge with one upstream (`-o`) against one routing to three
(two boxes serving the model, an API wanting a key), in one run.

    python bench/routing_bench.py [--duration S] [--connections N] [--rounds R]

Starts three Ollama stand-ins and two bridges as processes on free loopback ports (cache
off: every request goes upstream), and stops them at the end. Prints each figure with its
target and whether it is met.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import load, met, tool  # noqa: E402
from bridge.core import settings as bridge_settings  # noqa: E402
from bridge.core.exchange import Exchange  # noqa: E402
from bridge.core.pipeline import Context  # noqa: E402
from bridge.routing import config  # noqa: E402
from bridge.routing.stage import RoutingStage  # noqa: E402
from bridge.serve.processes import start_bridge, start_standin  # noqa: E402

API_KEY = "sk-bench-routing-key-0123456789abcdef"
MODEL = "qwen3:latest"
BODY = json.dumps({"model": MODEL, "stream": False,
                   "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
COST_TARGET_US = 30.0      # routing work per request
THROUGHPUT_TARGET = 0.90   # three upstreams' req/s at least this share of one upstream's


def upstreams_file(directory: Path, urls: list[str]) -> Path:
    path = directory / "upstreams.toml"
    path.write_text(f'''
[[upstream]]
name = "gpu-a"
url = "{urls[0]}"
models = ["qwen*", "llama*"]
model_map = {{ "gpt-4o-mini" = "qwen2.5:latest" }}

[[upstream]]
name = "gpu-b"
url = "{urls[1]}"
models = ["qwen*"]

[[upstream]]
name = "deepseek"
url = "{urls[2]}"
models = ["deepseek-*"]
api_key_env = "BENCH_ROUTING_KEY"
''')
    return path


def bench_cost(path: Path, rounds: int) -> float:
    """µs of routing work per request: the stage's request step, the route's hooks and
    the upstream leg built for a routed target, less the leg built without a route."""
    settings = bridge_settings.defaults().replace(upstreams=str(path))
    context = Context(settings)
    stage = RoutingStage(settings, context, config.load(
        str(path), environ={"BENCH_ROUTING_KEY": API_KEY}))
    client = context.upstream
    body = BODY.encode()
    payload = json.loads(body)

    def exchange() -> Exchange:
        return Exchange(surface="openai", endpoint="chat", method="POST",
                        path="/v1/chat/completions", query="",
                        headers={"content-type": "application/json"}, body=body,
                        request_id="r", payload=payload)

    def routed() -> None:
        ex = exchange()
        stage.on_request(ex)
        route = ex.route
        assert route is not None
        target = route.current
        route.started(target)
        client._leg(ex, target)
        route.answered(target, True)
        route.ended(target)

    def plain() -> None:
        client._leg(exchange(), None)

    timings = {}
    for name, run in (("plain", plain), ("routed", routed)):
        for _ in range(1000):  # warm up
            run()
        start = time.perf_counter()
        for _ in range(rounds):
            run()
        timings[name] = (time.perf_counter() - start) / rounds * 1e6
    return timings["routed"] - timings["plain"]


def bench_throughput(path: Path, urls: list[str], seconds: float,
                     connections: int) -> dict[str, dict]:
    results = {}
    logs = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    runs = {"one upstream (-o)": ((), urls[0], {}),
            "three upstreams (--upstreams)": (("--upstreams", str(path)), None,
                                              {"BENCH_ROUTING_KEY": API_KEY})}
    for name, (flags, upstream, env) in runs.items():
        with start_bridge(*flags, "--disable-think-filter", upstream=upstream, env=env,
                          log_dir=logs) as bridge:
            load(bridge.url + "/v1/chat/completions", BODY, connections, 1.0)  # warm up
            results[name] = load(bridge.url + "/v1/chat/completions", BODY, connections,
                                 seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=50_000, help="in-process rounds")
    args = parser.parse_args()
    boxes = [start_standin() for _ in range(2)]
    api = start_standin("--api-key", API_KEY)
    try:
        urls = [box.url for box in boxes] + [api.url]
        path = upstreams_file(Path(tempfile.mkdtemp(prefix="bench-routing-")), urls)
        cost = bench_cost(path, args.rounds)
        print(f"routing cost per request: {cost:.1f} us (target < {COST_TARGET_US:g} us): "
              f"{met(cost < COST_TARGET_US)}")
        results = bench_throughput(path, urls, args.duration, args.connections)
        for name, result in results.items():
            rps = result.get("rps", result["requests"] / result["seconds"])
            result["rps"] = rps
            print(f"miss path, {name}: {rps:.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
                  f"p99 {result['p99_ms']:.1f} ms, errors {result['errors']}, "
                  f"non-2xx {result['non2xx']} ({tool()}, {args.connections} connections, "
                  f"{os.cpu_count()} CPUs)")
        one, three = (result["rps"] for result in results.values())
        ratio = three / one if one else 0.0
        print(f"three upstreams / one upstream: {ratio:.2f} (target >= "
              f"{THROUGHPUT_TARGET:.2f}): {met(ratio >= THROUGHPUT_TARGET)}")
    finally:
        for process in (*boxes, api):
            process.stop()


if __name__ == "__main__":
    main()
