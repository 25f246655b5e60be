"""What knowing who asks costs a cache hit, and what it keeps across a restart.

1. In process: the principal and entitlement check of one hit (`Principals.of` on a new
   exchange, then `Entitlements.allows` with the verdict on file), in µs, beside the cache
   key of the same request (`cache_key`, measured in the same run) for scale.
2. Through real bridges (2 gevent workers) in front of the stand-in, with per-model
   entitlements: N questions asked with an entitled key, the bridge restarted on the same
   cache and state directories, the same N asked again: the hit rate before and after
   the restart, and the generations and probes the second round cost.

    python bench/identity_bench.py [--iterations N] [--questions N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.cache.keys import cache_key  # noqa: E402
from bridge.core import instance, settings  # noqa: E402
from bridge.core.exchange import Exchange  # noqa: E402
from bridge.core.upstream import UpstreamClient  # noqa: E402
from bridge.identity.entitlement import Entitlements  # noqa: E402
from bridge.identity.principal import Principals  # noqa: E402
from bridge.ollama_standin import StandIn  # noqa: E402
from bridge.ollama_standin.config import DEFAULT_MODELS  # noqa: E402
from bridge.serve.processes import start_bridge  # noqa: E402

KEY = "sk-bench-0123456789"
MODEL = "private:latest"


def per_call(action, iterations: int) -> float:
    """µs per call of `action`, the best of 5 rounds."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(iterations):
            action()
        best = min(best, (time.perf_counter() - started) / iterations)
    return best * 1e6


def in_process(iterations: int) -> None:
    state = tempfile.mkdtemp(prefix="identity-bench-")
    os.environ[instance.ENV] = state
    config = settings.load(["--enable-cache", "--state-dir", state], environ={})
    principals = Principals(config)
    principals.start()
    entitlements = Entitlements(config, UpstreamClient(config), principals)
    entitlements.start()
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}

    def exchange() -> Exchange:
        return Exchange(surface="openai", endpoint="chat", method="POST",
                        path="/v1/chat/completions", query="",
                        headers={"authorization": f"Bearer {KEY}"}, body=b"{}",
                        request_id="r", payload=payload)

    entitlements.learn(exchange(), 200)  # the verdict on file, as after a model call
    assert entitlements.allows(exchange())
    check = per_call(lambda: entitlements.allows(exchange()), iterations)
    build = per_call(exchange, iterations)
    key = per_call(lambda: cache_key("openai", "chat", payload, None, config.ollama),
                   iterations)
    print("1. per hit, in process (best of 5 rounds)")
    print(f"   principal + entitlement check: {check - build:6.2f} µs "
          f"(exchange construction, {build:.2f} µs, taken off)")
    print(f"   cache key of the same request: {key:6.2f} µs (reference)")
    print(f"   ratio check / cache key:       {(check - build) / key:6.2f}")


def across_restart(questions: int) -> None:
    standin = StandIn().start()
    standin.configure(models=[*DEFAULT_MODELS, MODEL], entitlements={MODEL: [KEY]})
    work = Path(tempfile.mkdtemp(prefix="identity-bench-"))
    flags = ("--enable-cache", "--cache-dir", str(work / "cache"), "--state-dir",
             str(work / "state"))
    asked = [{"model": MODEL, "messages": [{"role": "user", "content": f"q{i} {uuid.uuid4()}"}]}
             for i in range(questions)]
    headers = {"Authorization": f"Bearer {KEY}"}

    def round_(url: str) -> list[str]:
        return [requests.post(url + "/v1/chat/completions", json=body, headers=headers,
                              timeout=30).headers["x-cache"] for body in asked]

    try:
        with start_bridge(*flags, upstream=standin.url, log_dir=work) as bridge:
            round_(bridge.url)
            before = round_(bridge.url)
        generations, probes = standin.count("/v1/chat/completions"), \
            standin.count(f"/v1/models/{MODEL}")
        with start_bridge(*flags, upstream=standin.url, log_dir=work) as bridge:
            after = round_(bridge.url)
        new_generations = standin.count("/v1/chat/completions") - generations
        new_probes = standin.count(f"/v1/models/{MODEL}") - probes
    finally:
        standin.stop()

    def rate(statuses: list[str]) -> float:
        return 100 * sum(status.startswith("HIT-") for status in statuses) / len(statuses)

    print(f"2. {questions} questions of an entitled key, asked again across a restart")
    print(f"   hit rate before the restart: {rate(before):5.1f}%")
    print(f"   hit rate after the restart:  {rate(after):5.1f}% "
          f"(generations: {new_generations}, probes: {new_probes})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--questions", type=int, default=50)
    args = parser.parse_args()
    in_process(args.iterations)
    across_restart(args.questions)


if __name__ == "__main__":
    main()
