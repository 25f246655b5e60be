"""The Lua middleware's cost: latency that empty hooks add per request, and throughput at
64 connections with 2^1 and 2^3 runtimes per worker next to the bridge without Lua.

    python bench/lua_bench.py [--rounds N] [--duration S]

Part 1 calls the stage's request and response hooks in this process on a typical chat
exchange (both hooks per round: the cost a request pays). Part 2 runs real bridges
(2 gevent workers, cache on so that the bridge, not the stand-in, is the bottleneck)
against the stand-in, one after the other, with the same load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import summary, tool, warm_load  # noqa: E402
from bridge.core import settings as bridge_settings  # noqa: E402
from bridge.core.exchange import Exchange, Response  # noqa: E402
from bridge.lua.stage import LuaStage  # noqa: E402
from bridge.serve.processes import start_bridge, start_standin  # noqa: E402

EMPTY_HOOKS = """
function HandleServerRequest(request) return true, request end
function HandleServerResponse(response) return response end
"""
CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "qwen2.5", "messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello in five words, please."}]})
HEADERS = {"host": "127.0.0.1:3000", "content-type": "application/json",
           "content-length": str(len(BODY)), "authorization": "Bearer sk-xxx",
           "user-agent": "OpenAI/Python 1.99", "accept": "application/json",
           "accept-encoding": "gzip, deflate", "connection": "keep-alive",
           "x-stainless-lang": "python", "x-stainless-os": "Linux"}
ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                     "model": "qwen2.5", "choices": [{"index": 0, "message": {
                         "role": "assistant", "content": "Hello there, nice to meet."},
                         "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 20, "completion_tokens": 7,
                               "total_tokens": 27}}).encode()


def bench_hooks(script: Path, rounds: int) -> None:
    settings = bridge_settings.defaults().replace(enable_luajit=True, luajit_script=str(script))
    stage = LuaStage(settings)
    stage.start()
    timings = []
    for index in range(rounds):
        ex = Exchange(surface="openai", endpoint="chat", method="POST", path=CHAT, query="",
                      headers=dict(HEADERS), body=BODY.encode(), request_id=str(index))
        started = time.perf_counter()
        stage.on_request(ex)
        ex.response = Response(status=200, headers={"content-type": "application/json"},
                               body=ANSWER)
        stage.on_response(ex)
        timings.append(time.perf_counter() - started)
    timings.sort()
    print(f"empty hooks, both per request ({rounds} rounds): median "
          f"{statistics.median(timings) * 1e6:.1f} µs, p99 "
          f"{timings[int(len(timings) * 0.99)] * 1e6:.1f} µs")


def bench_throughput(script: Path, seconds: float, log_dir: Path) -> None:
    print(f"throughput, 64 connections, {seconds:.0f} s each, cache hits, 2 workers ({tool()}):")
    with start_standin(log_dir=log_dir) as standin:
        setups = {"no Lua": (), "Lua, 2^1 runtimes": ("--luajit-instances-power", "1"),
                  "Lua, 2^3 runtimes": ("--luajit-instances-power", "3")}
        for name, flags in setups.items():
            lua = ("--enable-luajit", "--luajit-script", str(script), *flags) if flags else ()
            with start_bridge("--enable-cache", "--cache-dir", str(log_dir / name.replace(
                    " ", "_")), *lua, upstream=standin.url, workers=2,
                    log_dir=log_dir) as bridge:
                result = warm_load(bridge.url + CHAT, BODY, 64, seconds)  # entry cached
                print(f"  {name:18} {summary(result)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lua-bench-") as work:
        script = Path(work) / "empty.lua"
        script.write_text(EMPTY_HOOKS)
        bench_hooks(script, args.rounds)
        bench_throughput(script, args.duration, Path(work))


if __name__ == "__main__":
    main()
