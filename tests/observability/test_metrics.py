"""`/metrics`: aggregated across gunicorn workers, adding up to the traffic sent, valid for
`promtool check metrics`, and the same under `gunicorn -c gunicorn.conf.py wsgi:app`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from helpers import keys_command, wait_for, worker_pids
from prometheus_client.parser import text_string_to_metric_families

from bridge.core import instance
from bridge.serve.processes import start_bridge

PROMTOOL = shutil.which("promtool")


def scrape(url: str, key: str | None = None) -> str:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    answer = requests.get(url + "/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return answer.text


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def usage(answer: requests.Response) -> tuple[int, int]:
    """(prompt, completion) tokens the client was told about, stream or not."""
    kind = answer.headers.get("content-type", "")
    if not answer.ok or not answer.request.path_url.startswith(("/v1/", "/api/")):
        return 0, 0
    if kind.startswith("text/event-stream"):
        frames = [json.loads(line[6:]) for line in answer.text.splitlines()
                  if line.startswith("data: {")]
    elif kind.startswith("application/x-ndjson"):
        frames = [json.loads(line) for line in answer.text.splitlines() if line]
    else:
        frames = [answer.json()]
    prompt = completion = 0
    for frame in frames:
        if frame.get("usage"):
            prompt += frame["usage"].get("prompt_tokens", 0)
            completion += frame["usage"].get("completion_tokens", 0)
        prompt += frame.get("prompt_eval_count", 0)
        completion += frame.get("eval_count", 0)
    return prompt, completion


def chat(text: str, **extra: object) -> dict:
    return {"model": "qwen2.5", "messages": [{"role": "user", "content": text}], **extra}


def mixed_traffic() -> list[tuple[str, str, object]]:
    """(method, path, JSON body or raw bytes) of every request the test sends."""
    sends: list[tuple[str, str, object]] = []
    sends += [("POST", "/v1/chat/completions", chat(f"plain {n}")) for n in range(6)]
    sends += [("POST", "/v1/chat/completions",
               chat(f"streamed {n}", stream=True, stream_options={"include_usage": True}))
              for n in range(4)]
    sends += [("POST", "/api/chat", chat(f"native {n}", stream=False)) for n in range(3)]
    sends += [("POST", "/api/generate", {"model": "qwen2.5", "prompt": f"generate {n}"})
              for n in range(2)]
    sends += [("GET", "/health", None)] * 5 + [("GET", "/no/such/route", None)] * 2
    sends += [("POST", "/v1/chat/completions", b"{not json")] * 2
    return sends


def send(url: str, method: str, path: str, body: object) -> tuple[int, int, int]:
    """Status and (prompt, completion) tokens of one request. The response is not kept:
    its socket would stay open, and an open keep-alive connection holds up a worker's
    graceful exit."""
    if isinstance(body, bytes):
        answer = requests.request(method, url + path, data=body, timeout=30,
                                  headers={"content-type": "application/json"})
    else:
        answer = requests.request(method, url + path, json=body, timeout=30)
    return (answer.status_code, *usage(answer))


@pytest.fixture(scope="module")
def three_workers(standin_server, tmp_path_factory):
    with start_bridge(upstream=standin_server.url, workers=3,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


def access_pids(log: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"\[(\d+)\] INFO bridge\.access", log)}


def stop_worker(pid: int) -> None:
    """SIGTERM one gunicorn worker of a bridge this test started; wait until it is gone."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} did not exit")


def test_counters_add_up_across_workers_even_when_one_is_replaced(three_workers, standin):
    url = three_workers.url
    before = scrape(url)
    sends = mixed_traffic()
    answers: list[tuple[int, int, int]] = []
    first_log = len(three_workers.log())
    with ThreadPoolExecutor(12) as pool:
        answers += pool.map(lambda s: send(url, *s), sends)
        first_pids = access_pids(three_workers.log()[first_log:])
        for pid in first_pids:  # the next half must be served by other workers
            stop_worker(pid)
        second_log = len(three_workers.log())
        answers += pool.map(lambda s: send(url, *s), sends)
    assert access_pids(three_workers.log()[second_log:]).isdisjoint(first_pids)
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 40 and statuses.count(404) == 4 and statuses.count(400) == 4
    prompt = sum(prompt for _, prompt, _ in answers)
    completion = sum(completion for _, _, completion in answers)
    assert prompt > 0 and completion > 0

    def sent(name: str, **labels: str) -> float:
        return total(text, name, **labels) - total(before, name, **labels)

    deadline = time.monotonic() + 5  # the last records are written as the responses close
    recorded = ("bridge_requests_total", "bridge_request_duration_seconds_count")
    while min(sent(name) for name in recorded if (text := scrape(url))) < len(answers):
        assert time.monotonic() < deadline, "the request metrics never reached the traffic sent"
        time.sleep(0.05)

    assert sent("bridge_requests_total") == len(answers)
    assert sent("bridge_requests_total", route="/v1/chat/completions", status="200") == 20
    assert sent("bridge_requests_total", route="/v1/chat/completions", status="400") == 4
    assert sent("bridge_requests_total", route="/api/chat", method="POST") == 6
    assert sent("bridge_requests_total", route="/api/generate") == 4
    assert sent("bridge_requests_total", route="/health", status="200") == 10
    assert sent("bridge_requests_total", status="404") == 4
    assert sent("bridge_request_duration_seconds_count") == len(answers)
    # the think filter's one /api/show per model (its capabilities) is no model request
    generations = standin.count() - standin.count("/api/show")
    assert sent("bridge_upstream_request_duration_seconds_count") == generations == 30
    assert sent("bridge_upstream_time_to_first_token_seconds_count") == 12  # the streams
    assert total(text, "bridge_upstream_requests_in_flight") == 0
    assert sent("bridge_prompt_tokens_total", source="upstream") == prompt
    assert sent("bridge_completion_tokens_total", source="upstream") == completion
    assert 'route="/no/such/route"' not in text  # route templates, never raw paths


def promtool_check(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run "
                    "installs it)")
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_accepts_a_real_scrape(three_workers, standin, tmp_path):
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: send(three_workers.url, *s), mixed_traffic()))
    promtool_check(scrape(three_workers.url))


def test_every_event_maps_to_a_metric_once_emitted(three_workers):
    text = scrape(three_workers.url)
    for name in ("bridge_upstream_retries_total", "bridge_ratelimit_refused_total",
                 "bridge_admission_queued_total", "bridge_think_blocks_removed_total",
                 "bridge_cache_misses_total", "bridge_cache_promotions_total",
                 "bridge_cache_memory_entries", "bridge_cache_disk_entries"):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name


def test_gunicorn_conf_py_shares_the_bucket_and_the_metrics(standin, tmp_path):
    with start_bridge(upstream=standin.url, via="gunicorn", workers=3, log_dir=tmp_path,
                      env={"BRIDGE_RATE_LIMIT": "3"}) as bridge:
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(
                lambda n: send(bridge.url, "POST", "/v1/chat/completions", chat(f"g {n}")),
                range(20)))
        elapsed = time.monotonic() - started
        refused = sum(status == 429 for status, _, _ in answers)
        assert standin.count() <= 3 + 3 * elapsed and refused > 0
        # counted as the worker that refused goes back to its event loop (the metric
        # updates of a loop turn are written together), which may follow the answer
        wait_for(lambda: total(scrape(bridge.url), "bridge_ratelimit_refused_total")
                 >= refused, what="every refusal counted")
        assert total(scrape(bridge.url), "bridge_ratelimit_refused_total") == refused


def test_cache_think_and_per_key_metrics(make_bridge, standin, tmp_path):
    """Shared mode with a client key, the cache and the think filter: the scrape names the
    key (never the key itself) and counts hits, stores and removed think blocks."""
    key = keys_command(tmp_path / "state", "create", "team-a")
    assert key.returncode == 0, key.stderr
    bridge = make_bridge("--enable-shared-mode", "--state-dir", str(tmp_path / "state"),
                         "--enable-cache", "--cache-dir", str(tmp_path / "cache"),
                         env={"BRIDGE_API_KEY": "sk-upstream-key-for-metrics"})
    raw_key = key.stdout.strip()
    body = {"model": "deepseek-r1:7b", "messages": [{"role": "user", "content": "why?"}]}
    for _ in range(3):
        answer = requests.post(bridge.url + "/v1/chat/completions", json=body, timeout=30,
                               headers={"authorization": f"Bearer {raw_key}",
                                        # raw tags in content: what the filter counts
                                        "X-Standin-Think": "tags-no-open"})
        assert answer.status_code == 200 and "<think>" not in answer.text

    # a request is counted once its response is closed, which may come after the client
    # read it: wait for the third count, then read everything from that scrape
    def all_counted() -> str | None:
        text = scrape(bridge.url)
        return text if total(text, "bridge_requests_total", client_key="team-a",
                             status="200") == 3 else None

    text = wait_for(all_counted, what="the third request counted")
    assert standin.count() == 1
    assert total(text, "bridge_cache_misses_total") == 1
    assert total(text, "bridge_cache_stores_total") == 1
    assert total(text, "bridge_cache_hits_total") == 2
    assert total(text, "bridge_cache_disk_entries") == 1
    assert total(text, "bridge_think_blocks_removed_total") >= 1
    assert total(text, "bridge_prompt_tokens_total", client_key="team-a", source="cache") > 0
    assert raw_key not in text and "sk-upstream-key-for-metrics" not in text
    promtool_check(text)  # with the cache's and the think filter's series too


def test_a_run_directory_left_by_a_killed_instance_is_removed_at_the_next_start(
        make_bridge, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = instance.directory().parent / "deepseek-ollama-bridge-left-behind"
    (stale / "metrics").mkdir(parents=True)
    (stale / "owner.pid").write_text(str(dead.pid))
    bridge = make_bridge(workers=1)
    assert not stale.exists()
    owners = [path / "owner.pid" for path in stale.parent.glob("deepseek-ollama-bridge-*")]
    run_dirs = [owner.parent for owner in owners
                if owner.exists() and owner.read_text() == str(bridge.pid)]
    assert len(run_dirs) == 1
    bridge.stop()
    assert not run_dirs[0].exists()  # the master removes its own at exit


def test_a_metrics_file_a_worker_is_creating_does_not_fail_the_scrape(make_bridge):
    """A worker's new metric file is empty for an instant; a scrape then must not 500."""
    bridge = make_bridge(workers=1)
    [run_dir] = [owner.parent for owner in
                 instance.directory().parent.glob("deepseek-ollama-bridge-*/owner.pid")
                 if owner.read_text() == str(bridge.pid)]
    (run_dir / "metrics" / "counter_999999.db").touch()  # made, not yet written
    promtool_check(scrape(bridge.url))


METRICS_KEY = "metrics-" + "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def private(standin_server, tmp_path_factory):
    """A bridge whose /metrics needs a key (given in the environment), with the cache on:
    the cache asks the upstream for usage whatever the client asked."""
    home = tmp_path_factory.mktemp("private")
    with start_bridge("--enable-cache", "--cache-dir", str(home / "cache"),
                      upstream=standin_server.url, workers=1, log_dir=home,
                      env={"BRIDGE_METRICS_KEY": METRICS_KEY}) as process:
        yield process


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", f"Basic {METRICS_KEY}",
                                           METRICS_KEY])
def test_metrics_without_the_metrics_key_are_401(private, authorization):
    headers = {"authorization": authorization} if authorization else {}
    refused = requests.get(private.url + "/metrics", headers=headers, timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "bridge_requests_total" not in refused.text and METRICS_KEY not in refused.text


def test_metrics_with_the_metrics_key_are_served_and_the_key_is_never_logged(private):
    text = scrape(private.url, METRICS_KEY)
    assert "bridge_requests_total" in text
    shouted = requests.get(private.url + "/metrics", timeout=10,
                           headers={"authorization": f"BEARER {METRICS_KEY}"})
    assert shouted.status_code == 200
    assert requests.get(private.url + "/health", timeout=10).status_code == 200  # open
    assert METRICS_KEY not in private.log()


def upstream_usage(standin, body: dict) -> tuple[int, int]:
    """The usage the stand-in reports for `body` when asked for it."""
    asked = {**body, "stream": True, "stream_options": {"include_usage": True}}
    answer = requests.post(standin.url + "/v1/chat/completions", json=asked, timeout=30)
    return usage(answer)


def test_tokens_the_upstream_reported_count_when_the_client_did_not_ask_for_usage(
        private, standin):
    """The cache asks the upstream for usage and drops it from the client's stream: the
    metrics still count what the upstream reported, once per upstream call."""
    before = scrape(private.url, METRICS_KEY)
    streamed = chat("count my tokens " + os.urandom(4).hex(), stream=True)
    whole = chat("count these too " + os.urandom(4).hex())
    answers = [requests.post(private.url + "/v1/chat/completions", json=body, timeout=30)
               for body in (streamed, whole)]
    assert [answer.headers["x-cache"] for answer in answers] == ["MISS", "MISS"]
    assert usage(answers[0]) == (0, 0)  # the client did not ask for usage in its stream
    assert standin.count("/v1/chat/completions") == 2  # (and at most an entitlement probe)
    expected = [upstream_usage(standin, body) for body in (streamed, whole)]
    prompt = sum(tokens[0] for tokens in expected)
    completion = sum(tokens[1] for tokens in expected)
    assert prompt > 0 and completion > 0

    def counted(name: str) -> float:
        text = scrape(private.url, METRICS_KEY)
        return (total(text, name, source="upstream")
                - total(before, name, source="upstream"))

    deadline = time.monotonic() + 5  # counted as each response closes
    while counted("bridge_completion_tokens_total") < completion:
        assert time.monotonic() < deadline, "the upstream's tokens were not counted"
        time.sleep(0.05)
    assert counted("bridge_prompt_tokens_total") == prompt
    assert counted("bridge_completion_tokens_total") == completion


def test_a_burst_of_hits_is_counted_exactly_and_a_stopped_worker_loses_none(make_bridge,
                                                                             tmp_path):
    """Metric updates are written in batches (per turn of a worker's event loop): every
    request of a concurrent burst of cache hits is in the counters and the histogram's
    buckets, and so are those of workers stopped right after their last answer."""
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path / "cache"))
    body = chat("counted in batches " + os.urandom(4).hex())
    before = scrape(bridge.url)

    def burst(clients: int = 8, each: int = 40) -> list[requests.Response]:
        def client(_: int) -> list[requests.Response]:
            with requests.Session() as session:  # kept alive: the fast path's repeats
                return [session.post(bridge.url + "/v1/chat/completions", json=body,
                                     timeout=30) for _ in range(each)]
        with ThreadPoolExecutor(clients) as pool:
            return [answer for answers in pool.map(client, range(clients))
                    for answer in answers]

    first = requests.post(bridge.url + "/v1/chat/completions", json=body, timeout=30)
    assert first.headers["x-cache"] == "MISS"
    answers = [first, *burst()]
    assert all(answer.status_code == 200 for answer in answers)

    def sent(text: str, name: str, **labels: str) -> float:
        return total(text, name, **labels) - total(before, name, **labels)

    def counted(count: int) -> str | None:
        text = scrape(bridge.url)
        return text if sent(text, "bridge_requests_total", route="/v1/chat/completions") \
            == count else None

    def check(text: str, answers: list[requests.Response]) -> None:
        count = len(answers)
        hits = sum(answer.headers["x-cache"].startswith("HIT-") for answer in answers)
        assert hits >= count - 2  # the miss (and a disk hit in the other worker)
        route = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
        assert sent(text, "bridge_requests_total", **route, client_key="") == count
        assert sent(text, "bridge_request_duration_seconds_count", **route) == count
        assert sent(text, "bridge_request_duration_seconds_bucket", **route, le="+Inf") \
            == count
        assert sent(text, "bridge_request_duration_seconds_bucket", **route, le="60.0") \
            == count  # every one in the buckets, none only in the sum
        assert sent(text, "bridge_request_duration_seconds_sum", **route) > 0
        assert sent(text, "bridge_cache_hits_total") == hits
        assert sent(text, "bridge_cache_misses_total") == 1
        assert sent(text, "bridge_model_requests_total", model=body["model"]) == count
        assert sent(text, "bridge_completion_tokens_total", source="cache") == \
            hits * usage(first)[1]
        if PROMTOOL:
            promtool_check(text)

    check(wait_for(lambda: counted(len(answers)), what="every request counted"), answers)

    # a second burst, its workers stopped at once: what they held is written as they exit
    answers += burst()
    workers = worker_pids(bridge.pid)
    for pid in workers:
        stop_worker(pid)
    wait_for(lambda: set(worker_pids(bridge.pid)) - set(workers), what="a new worker")
    check(wait_for(lambda: counted(len(answers)), what="the stopped workers' requests"),
          answers)
