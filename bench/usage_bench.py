"""What usage, budgets and traces cost, in one run (issue 28's bench): per request in
process (recording an exchange when it closes, the budget check, and the ledger's flush
per row), against a reference measured in the same run (making the request's
`Exchange`), and the latency of a chat request through bridges with the ledger off and on
(with a budget checked); then tracing off vs on (`bench/tracing_bench.py`'s parts: per
request in process, per exported batch, req/s through bridges); last, a summary of the
µs each adds to a request.

    python bench/usage_bench.py [--requests N] [--rounds N] [--duration S]

Starts the Ollama stand-in and bridges as processes on free loopback ports, and stops
them at the end. The ledger's in-process figures are the best of 5 runs.
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
from typing import Callable
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import tracing_bench  # noqa: E402
from bench.loadgen import machine_line  # noqa: E402
from bridge.budgets.stage import BudgetStage  # noqa: E402
from bridge.core import events  # noqa: E402
from bridge.core import settings as bridge_settings  # noqa: E402
from bridge.core.exchange import Budget, Exchange, Response, Usage  # noqa: E402
from bridge.identity.principal import Principals  # noqa: E402
from bridge.serve.processes import start_bridge, start_standin  # noqa: E402
from bridge.usage.stage import UsageStage  # noqa: E402

BODY = json.dumps({"model": "llama3.2", "stream": False,
                   "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
PRINCIPALS = 50  # distinct keys in the batch a flush writes
RECORD, CHECK = "record an exchange (at close)", "budget check (on request)"
MODELS = 3


def best_of(runs: int, rounds: int, work: Callable[[int], None]) -> float:
    """µs per call of `work(i)`, the best of `runs` runs of `rounds` calls."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for index in range(rounds):
            work(index)
        best = min(best, (time.perf_counter() - start) / rounds * 1e6)
    return best


def exchange(index: int) -> Exchange:
    ex = Exchange(surface="openai", endpoint="chat", method="POST",
                  path="/v1/chat/completions", query="", headers={}, body=BODY.encode(),
                  request_id="r", payload={"model": f"model-{index % MODELS}"})
    ex.client_key = ex.principal = f"tenant-{index % PRINCIPALS}"
    return ex


def bench_in_process(rounds: int) -> list[tuple[str, float]]:
    state_dir = tempfile.mkdtemp(prefix="bench-usage-")
    settings = bridge_settings.defaults().replace(state_dir=state_dir,
                                                  enable_shared_mode=True)
    principals = Principals(settings)
    usage = UsageStage(settings, principals)
    budgets = BudgetStage(settings, usage.recorder, principals)
    events.subscribe(usage.recorder)  # what its start does in a worker, without the loop
    answer = Response(status=200, body=b'{"choices": []}')
    exchanges = [exchange(index) for index in range(rounds)]
    for index, ex in enumerate(exchanges):
        ex.response, ex.usage = answer, Usage(20 + index % 7, 300)
        ex.budget = Budget(10**12, ("day", "week", "month")[index % 3])

    rows: list[tuple[str, float]] = []
    reference = best_of(5, rounds, exchange)
    rows.append(("reference: make one request's Exchange", reference))
    rows.append((RECORD,
                 best_of(5, rounds, lambda i: usage.record(exchanges[i]))))
    rows.append((CHECK,
                 best_of(5, rounds, lambda i: budgets.on_request(exchanges[i]))))
    # a flush: one batch of PRINCIPALS x MODELS rows into SQLite, then the totals re-read
    for index in range(rounds):
        usage.record(exchanges[index])
    batch = len(usage.recorder.pending)
    flush = best_of(5, 1, lambda _: (
        [usage.record(exchanges[i]) for i in range(PRINCIPALS * MODELS)],
        usage.recorder.flush()))
    rows.append((f"flush of {batch} rows + totals re-read (per flush, off the loop)", flush))
    usage.recorder.stop()
    return rows


def chat_latency(conn: http.client.HTTPConnection) -> float:
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - start


def bench_latency(n: int) -> list[tuple[str, float, float]]:
    standin = start_standin()
    bridges = {}
    try:
        bridges["ledger off"] = start_bridge(
            "--disable-usage-ledger", "--state-dir", tempfile.mkdtemp(), upstream=standin.url,
            workers=1)
        bridges["ledger on, budget"] = start_bridge(
            "--state-dir", tempfile.mkdtemp(), "--budget-tokens", str(10**12),
            upstream=standin.url, workers=1)
        conns = {name: http.client.HTTPConnection(urlsplit(bridge.url).hostname,
                                                  urlsplit(bridge.url).port, timeout=30)
                 for name, bridge in bridges.items()}
        times: dict[str, list[float]] = {name: [] for name in bridges}
        for name in bridges:  # warm up
            chat_latency(conns[name])
        for _ in range(n):  # interleaved, so drift hits both alike
            for name in bridges:
                times[name].append(chat_latency(conns[name]))
        for conn in conns.values():
            conn.close()
        return [(name, statistics.median(values) * 1000,
                 sorted(values)[int(0.9 * (len(values) - 1))] * 1000)
                for name, values in times.items()]
    finally:
        for bridge in bridges.values():
            bridge.stop()
        standin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--duration", type=float, default=4.0,
                        help="seconds of load per bridge in the tracing part")
    args = parser.parse_args()
    print(machine_line())
    print(f"Usage ledger and budgets, in process, best of 5 x {args.rounds}:")
    print(f"  {'what':70} {'µs':>9}")
    ledger = dict(bench_in_process(args.rounds))
    for what, micros in ledger.items():
        print(f"  {what:70} {micros:9.2f}")
    print(f"\nchat request through the bridge (1 worker, keep-alive), {args.requests} each:")
    print(f"  {'bridge':20} {'median ms':>10} {'p90 ms':>8}")
    for name, median, p90 in bench_latency(args.requests):
        print(f"  {name:20} {median:10.3f} {p90:8.3f}")
    print("\nTraces (OpenTelemetry), off vs on:")
    tracing = tracing_bench.run(args.rounds, args.duration)
    print(f"\nSummary, per request in process: ledger record "
          f"{ledger[RECORD]:.2f} µs + budget check {ledger[CHECK]:.2f} µs (wall, best of 5); "
          f"tracing on adds {tracing:.1f} µs of CPU over tracing off")


if __name__ == "__main__":
    main()
