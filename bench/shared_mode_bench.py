"""What shared mode costs: the auth stage per request in process (key lookup among many
keys, with and without a per-key rate counted in SQLite), and the latency of a chat request
through bridges with shared mode off and on.

    python bench/shared_mode_bench.py [--requests N] [--keys K]

Starts the Ollama stand-in and three bridges (shared mode off; on with K client keys; on
with a rate-limited key) as processes on free loopback ports, and stops them at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.core import settings as bridge_settings  # noqa: E402
from bridge.core.exchange import Exchange, Response  # noqa: E402
from bridge.serve.processes import start_bridge, start_standin  # noqa: E402
from bridge.shared_mode.keystore import KeyStore  # noqa: E402
from bridge.shared_mode.stage import AuthStage  # noqa: E402

UPSTREAM_KEY = "sk-bench-upstream-key-0123456789abcdef"
BODY = json.dumps({"model": "llama3.2", "stream": False,
                   "messages": [{"role": "user", "content": "Why is the sky blue?"}]})


def make_store(state_dir: Path, keys: int) -> dict[str, str]:
    """K plain keys and one with a rate far above what the benchmark sends."""
    with KeyStore(state_dir) as store:
        for index in range(keys):
            store.create(f"tenant-{index}")
        plain, _ = store.create("plain")
        rated, _ = store.create("rated", rate=(1_000_000, 60))
    return {"plain": plain, "rated": rated}


def bench_stage(keys: int, rounds: int = 20_000) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="bench-state-"))
    raw = make_store(state_dir, keys)
    stage = AuthStage(bridge_settings.defaults().replace(
        enable_shared_mode=True, api_key=bridge_settings.Secret(UPSTREAM_KEY),
        state_dir=str(state_dir)))
    stage.store.open()
    body = json.dumps({"choices": [{"message": {"content": "x" * 2000}}]}).encode()
    for name, key in raw.items():
        start = time.perf_counter()
        for _ in range(rounds):
            ex = Exchange(surface="openai", endpoint="chat", method="POST",
                          path="/v1/chat/completions", query="",
                          headers={"authorization": f"Bearer {key}"}, body=b"{}",
                          request_id="r", payload={"model": "llama3.2"})
            stage.on_request(ex)
            ex.response = Response(status=200, body=body)
            stage.on_response(ex)
        per = (time.perf_counter() - start) / rounds * 1e6
        print(f"auth stage, {keys + 2} keys in the store, {name} key: {per:.1f} µs per "
              "request (check, headers, redaction of a 2 KB body)")


def chat_latency(conn: http.client.HTTPConnection, key: str | None) -> float:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", BODY, headers)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - start


def bench_latency(n: int, keys: int) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="bench-state-"))
    raw = make_store(state_dir, keys)
    shared = ("--enable-shared-mode", "--state-dir", str(state_dir))
    env = {"BRIDGE_API_KEY": UPSTREAM_KEY}
    standin = start_standin()
    bridges = {}
    try:
        bridges["off"] = (start_bridge(upstream=standin.url, workers=1), None)
        bridges["on"] = (start_bridge(*shared, upstream=standin.url, workers=1, env=env),
                         raw["plain"])
        bridges["on, rated"] = (start_bridge(*shared, upstream=standin.url, workers=1,
                                             env=env), raw["rated"])
        conns = {name: http.client.HTTPConnection(urlsplit(bridge.url).hostname,
                                                  urlsplit(bridge.url).port, timeout=30)
                 for name, (bridge, _) in bridges.items()}
        times: dict[str, list[float]] = {name: [] for name in bridges}
        for name, (_, key) in bridges.items():  # warm up
            chat_latency(conns[name], key)
        for _ in range(n):  # interleaved, so drift hits all alike
            for name, (_, key) in bridges.items():
                times[name].append(chat_latency(conns[name], key))
        print(f"chat request latency through the bridge (1 worker, keep-alive), {n} each:")
        for name, values in times.items():
            p90 = sorted(values)[int(0.9 * (len(values) - 1))] * 1000
            print(f"  shared mode {name:10}: median {statistics.median(values) * 1000:7.3f} ms"
                  f"   p90 {p90:7.3f} ms")
        for conn in conns.values():
            conn.close()
    finally:
        for bridge, _ in bridges.values():
            bridge.stop()
        standin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--keys", type=int, default=100, help="client keys in the store")
    args = parser.parse_args()
    bench_stage(args.keys)
    bench_latency(args.requests, args.keys)


if __name__ == "__main__":
    main()
