"""What accepting an async request costs: the 202's latency for one client sending
sequentially, and how many jobs per second one instance (2 gevent workers) accepts from
8 concurrent clients. The stand-in holds every generation for 30 s, so only acceptance
is measured (jobs stay queued or running).

    .venv/bin/python bench/async_bench.py [--requests 400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.ollama_standin import StandIn  # noqa: E402
from bridge.serve.processes import start_bridge  # noqa: E402

CLIENTS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    count = parser.parse_args().requests
    with StandIn() as standin:
        standin.configure(first_token_delay=30.0)
        with start_bridge("--enable-async-request", "--state-dir", tempfile.mkdtemp(),
                          "--async-max-queued", "100000", "--max-concurrency", "2",
                          upstream=standin.url, workers=2) as bridge:

            def submit(session: requests.Session) -> float:
                fingerprint = uuid.uuid4().hex
                started = time.perf_counter()
                answer = session.post(bridge.url + "/v1/chat/completions", timeout=30, json={
                    "model": "qwen2.5", "request_fingerprint": fingerprint,
                    "messages": [{"role": "user", "content": fingerprint}]})
                assert answer.status_code == 202, answer.text
                return time.perf_counter() - started

            session = requests.Session()
            for _ in range(20):
                submit(session)
            alone = sorted(submit(session) for _ in range(count))
            print(f"sequential 202: median {statistics.median(alone) * 1000:.2f} ms, "
                  f"p99 {alone[int(len(alone) * 0.99)] * 1000:.2f} ms")
            sessions = [requests.Session() for _ in range(CLIENTS)]
            started = time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                loaded = sorted(pool.map(lambda n: submit(sessions[n % CLIENTS]),
                                         range(2 * count)))
            elapsed = time.perf_counter() - started
            print(f"{CLIENTS} concurrent clients: {2 * count / elapsed:.0f} jobs/s accepted; "
                  f"202 median {statistics.median(loaded) * 1000:.2f} ms, "
                  f"p99 {loaded[int(len(loaded) * 0.99)] * 1000:.2f} ms")


if __name__ == "__main__":
    main()
