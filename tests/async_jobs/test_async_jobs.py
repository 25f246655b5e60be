"""Async requests end to end: real gunicorn bridges (2 gevent workers) in front of a slow
stand-in, driven with `requests` and the `openai` SDK; the job store is a real SQLite
file, and the crash test kills the whole bridge with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import openai
import pytest
import requests
from helpers import keys_command, normalized, wait_for

from bridge.ollama_standin import Fault, StandIn
from bridge.serve.processes import ROOT, Process, start_bridge

SLOW = {"x-standin-token-delay": "0.05"}  # a stream of ~10 tokens takes about half a second
CHAT = "/v1/chat/completions"


def chat(text: str, stream: bool = False, fingerprint: object = None, **extra: object) -> dict:
    body: dict = {"model": "qwen2.5", "stream": stream,
                  "messages": [{"role": "user", "content": text}], **extra}
    if fingerprint is not None:
        body["request_fingerprint"] = fingerprint
    return body


def new_fingerprint() -> str:
    return f"job-{uuid.uuid4().hex}"


def events(response: requests.Response) -> list:
    """An SSE body as its events, without the per-call fields."""
    lines = [line[6:] for line in response.content.split(b"\n") if line.startswith(b"data: ")]
    return [line.decode() if line == b"[DONE]" else normalized(json.loads(line))
            for line in lines]


def until_done(url: str, body: dict | None = None, headers: dict | None = None,
               timeout: float = 20.0, fingerprint: str = "") -> requests.Response:
    """Resend `body` (or ask the status URL) until the answer is no longer a 202."""
    def settled() -> list[requests.Response]:  # a list: an error Response is falsy
        if body is not None:
            answer = requests.post(url, json=body, headers=headers, timeout=10)
        else:
            answer = requests.get(url, headers=headers, timeout=10)
        return [] if answer.status_code == 202 else [answer]
    return wait_for(settled, timeout, f"async job {fingerprint or url} to end")[0]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("async-state")


@pytest.fixture(scope="module")
def bridge(standin_server: StandIn, state_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """Async requests and the cache on, quick retries (-i 50 -m 100, -a 0)."""
    with start_bridge("--enable-async-request", "--enable-cache", "--cache-dir",
                      str(tmp_path_factory.mktemp("async-cache")), "--state-dir",
                      str(state_dir), "-i", "50", "-m", "100", "--cache-ttl", "600000",
                      upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("async-bridge")) as process:
        yield process


# --- the async path answers like the synchronous one ----------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_202_then_the_result_the_synchronous_call_returns(bridge: Process, standin: StandIn,
                                                          stream: bool) -> None:
    fingerprint = new_fingerprint()
    body = chat(f"async {fingerprint}", stream, fingerprint)
    first = requests.post(bridge.url + CHAT, json=body, headers=SLOW, timeout=10)
    assert first.status_code == 202
    status = first.json()
    assert status["fingerprint"] == fingerprint and status["status"] in ("queued", "running")
    assert isinstance(status["created"], int)
    assert first.headers["retry-after"] == "1"
    assert first.headers["location"] == f"/v1/async/{fingerprint}"

    done = until_done(bridge.url + CHAT, body, SLOW, fingerprint=fingerprint)
    assert done.status_code == 200
    at_status_url = requests.get(bridge.url + first.headers["location"], timeout=10)
    assert at_status_url.status_code == 200 and at_status_url.content == done.content

    # the same request without a fingerprint: synchronous, and a cache hit of the job
    plain = {key: value for key, value in body.items() if key != "request_fingerprint"}
    sync = requests.post(bridge.url + CHAT, json=plain, timeout=10)
    assert sync.status_code == 200 and sync.headers["x-cache"].startswith("HIT")
    assert standin.count(CHAT) == 1
    assert done.headers["content-type"] == sync.headers["content-type"]
    if stream:
        assert events(done) == events(sync) and events(done)[-1] == "[DONE]"
    else:
        assert normalized(done.json()) == normalized(sync.json())
    assert "request_fingerprint" not in standin.requests[-1].body.decode()


def test_the_openai_sdk_sends_a_fingerprint_and_gets_202_then_its_completion(
        bridge: Process, standin: StandIn) -> None:
    client = openai.OpenAI(base_url=bridge.url + "/v1", api_key="unused", max_retries=0)
    fingerprint = new_fingerprint()
    ask = {"model": "qwen2.5", "messages": [{"role": "user", "content": "sdk question"}],
           "extra_body": {"request_fingerprint": fingerprint}, "extra_headers": SLOW}
    first = client.chat.completions.with_raw_response.create(**ask)
    assert first.status_code == 202

    def finished():
        raw = client.chat.completions.with_raw_response.create(**ask)
        return raw if raw.status_code == 200 else None

    completion = wait_for(finished, 20, "the SDK's async job").parse()
    assert completion.choices[0].message.content == "Echo: sdk question"
    assert standin.count(CHAT) == 1


def test_the_ollama_surface_has_its_own_status_url(bridge: Process, standin: StandIn) -> None:
    fingerprint = new_fingerprint()
    body = {"model": "qwen2.5", "prompt": "native", "stream": True,
            "request_fingerprint": fingerprint}
    first = requests.post(bridge.url + "/api/generate", json=body, headers=SLOW, timeout=10)
    assert first.status_code == 202
    assert first.headers["location"] == f"/api/async/{fingerprint}"
    done = until_done(bridge.url + first.headers["location"], fingerprint=fingerprint)
    assert done.status_code == 200
    assert done.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in done.content.splitlines()]
    assert "".join(line["response"] for line in lines) == "Echo: native"
    assert lines[-1]["done"] is True


# --- idempotence ----------------------------------------------------------------------

def test_repeats_while_running_make_no_second_upstream_call_on_either_worker(
        bridge: Process, standin: StandIn) -> None:
    fingerprint = new_fingerprint()
    body = chat("a slow one " + "word " * 20, True, fingerprint)
    # ~20 s of generation: far longer than the repeats below take, even on a loaded
    # machine (the loop ends as soon as both workers answered one)
    slow = {"x-standin-token-delay": "0.5"}
    assert requests.post(bridge.url + CHAT, json=body, headers=slow,
                         timeout=10).status_code == 202

    def repeat(index: int) -> int:
        # a new connection each time: gunicorn's workers take them in turn
        return requests.post(bridge.url + CHAT, json=body, timeout=10,
                             headers={**slow, "x-request-id": f"{fingerprint}-r{index}"}
                             ).status_code

    def served_by() -> set[str]:
        return {line.split("[", 1)[1].split("]", 1)[0] for line in bridge.log().splitlines()
                if f"id={fingerprint}-r" in line}

    statuses: list[int] = []
    with ThreadPoolExecutor(4) as pool:  # until both workers took some (they accept in turns)
        while len(served_by()) < 2 and len(statuses) < 200:
            statuses += pool.map(repeat, range(len(statuses), len(statuses) + 8))
    assert statuses == [202] * len(statuses)
    assert len(served_by()) == 2, "the repeats reached one worker only"
    assert until_done(bridge.url + CHAT, body, slow, timeout=120).status_code == 200
    assert standin.count(CHAT) == 1


def test_the_same_fingerprint_with_another_request_is_a_conflict(bridge: Process,
                                                                 standin: StandIn) -> None:
    fingerprint = new_fingerprint()
    assert requests.post(bridge.url + CHAT, json=chat("one", fingerprint=fingerprint),
                         timeout=10).status_code == 202
    other = requests.post(bridge.url + CHAT, json=chat("another", fingerprint=fingerprint),
                          timeout=10)
    assert other.status_code == 409
    error = other.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "request_fingerprint" and fingerprint in error["message"]


@pytest.mark.parametrize("fingerprint", [123, "", "x" * 129, "has space", "ünïcode", "a/b",
                                         ["list"], True])
def test_a_bad_fingerprint_is_a_400(bridge: Process, standin: StandIn,
                                    fingerprint: object) -> None:
    question = f"bad {uuid.uuid4().hex}"  # a job of an earlier test may still call upstream
    answer = requests.post(bridge.url + CHAT, json=chat(question, fingerprint=fingerprint),
                           timeout=10)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "request_fingerprint" and "128" in error["message"]
    native = requests.post(bridge.url + "/api/chat",
                           json=chat(question, fingerprint=fingerprint), timeout=10)
    assert native.status_code == 400 and "request_fingerprint" in native.json()["error"]
    assert not [seen for seen in list(standin.requests) if question.encode() in seen.body]


def test_an_unknown_fingerprint_at_the_status_url_is_a_404(bridge: Process) -> None:
    answer = requests.get(bridge.url + "/v1/async/never-sent", timeout=10)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "request_fingerprint_not_found"
    assert requests.get(bridge.url + "/v1/async/bad%20one", timeout=10).status_code == 400


# --- retries and final errors -----------------------------------------------------------

def test_an_upstream_failing_twice_then_answering_gives_200(bridge: Process,
                                                           standin: StandIn) -> None:
    standin.push_fault(Fault("status", status=500, path=CHAT), times=2)
    fingerprint = new_fingerprint()
    body = chat("third time lucky", fingerprint=fingerprint)
    assert requests.post(bridge.url + CHAT, json=body, timeout=10).status_code == 202
    done = until_done(bridge.url + f"/v1/async/{fingerprint}", fingerprint=fingerprint)
    assert done.status_code == 200
    assert done.json()["choices"][0]["message"]["content"] == "Echo: third time lucky"
    assert standin.count(CHAT) == 3


def test_an_upstream_failing_for_good_gives_its_error(bridge: Process,
                                                      standin: StandIn) -> None:
    standin.push_fault(Fault("status", status=503, path=CHAT, body="overloaded"), times=3)
    fingerprint = new_fingerprint()
    body = chat("never answered", fingerprint=fingerprint)
    assert requests.post(bridge.url + CHAT, json=body, timeout=10).status_code == 202
    failed = until_done(bridge.url + CHAT, body, fingerprint=fingerprint)
    assert failed.status_code == 503
    assert "overloaded" in failed.text
    assert standin.count(CHAT) == 3  # at least 3 runs for async work, though -a is 0
    # an error that retrying cannot cure is final at once
    unknown = chat("who?", fingerprint=new_fingerprint(), model="no-such-model")
    assert requests.post(bridge.url + CHAT, json=unknown, timeout=10).status_code == 202
    assert until_done(bridge.url + CHAT, unknown).status_code == 404
    assert standin.count(CHAT) == 4


def test_the_pass_through_credential_is_used_then_forgotten(bridge: Process, standin: StandIn,
                                                            state_dir: Path) -> None:
    secret = "sk-upstream-" + uuid.uuid4().hex
    standin.configure(api_key=secret)
    fingerprint = new_fingerprint()
    body = chat("with my key", fingerprint=fingerprint)
    auth = {"authorization": f"Bearer {secret}"}
    assert requests.post(bridge.url + CHAT, json=body, headers=auth,
                         timeout=10).status_code == 202
    done = until_done(bridge.url + CHAT, body, auth, fingerprint=fingerprint)
    assert done.status_code == 200, done.text
    files = list(state_dir.glob("jobs.sqlite3*"))
    assert files and not any(secret.encode() in path.read_bytes() for path in files)
    assert secret not in bridge.log()


def test_the_jobs_are_counted(bridge: Process) -> None:
    def scrape() -> str:
        return requests.get(bridge.url + "/metrics", timeout=10).text

    def gauge_zero() -> str | None:  # the last job's run ends after its result is stored
        text = scrape()
        return text if metric(text, "bridge_async_jobs_running") == 0 else None

    text = wait_for(gauge_zero, 30, "no async job running")

    def value(name: str) -> float:
        return metric(text, name)

    assert value("bridge_async_jobs_queued_total") >= 8
    assert value("bridge_async_jobs_completed_total") >= 6
    assert value("bridge_async_jobs_failed_total") >= 2
    assert value("bridge_async_jobs_retried_total") >= 4
    assert value("bridge_async_job_run_seconds_count") >= 10
    assert value("bridge_async_job_queue_wait_seconds_count") >= 8


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def test_operators_list_show_and_purge_jobs(bridge: Process, state_dir: Path) -> None:
    def jobs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bridge", "jobs", "--state-dir",
                               str(state_dir), *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)

    listed = json.loads(jobs("list", "--json").stdout)
    assert listed and {"fingerprint", "status", "attempts"} <= set(listed[0])
    assert not any(job["holds_credential"] for job in listed if job["status"] == "done")
    shown = jobs("show", listed[0]["fingerprint"])
    assert shown.returncode == 0 and listed[0]["fingerprint"] in shown.stdout
    assert jobs("show", "no-such-job").returncode == 1
    purged = jobs("purge")
    assert purged.returncode == 0 and "purged" in purged.stdout
    assert all(job["status"] not in ("done", "failed")
               for job in json.loads(jobs("list", "--json").stdout))


# --- bounds and ownership ---------------------------------------------------------------

def test_beyond_the_queue_bound_a_503_with_retry_after(make_bridge, standin: StandIn,
                                                      tmp_path: Path) -> None:
    # one upstream slot for the instance: each worker runs one job, the rest wait
    process = make_bridge("--enable-async-request", "--state-dir", str(tmp_path),
                          "--max-concurrency", "1", "--async-max-queued", "2")
    slow = {"x-standin-token-delay": "0.5"}

    def submit(text: str) -> requests.Response:
        return requests.post(process.url + CHAT, json=chat(text, True, new_fingerprint()),
                             headers=slow, timeout=10)

    def running(location: str) -> bool:
        answer = requests.get(process.url + location, timeout=10)
        assert answer.status_code == 202, answer.text
        return answer.json()["status"] == "running"

    for text in ("run 1", "run 2"):
        first = submit(text)
        assert first.status_code == 202
        location = first.headers["location"]
        wait_for(lambda: running(location), 10, f"{text} to start")  # noqa: B023 - used at once
    assert [submit(text).status_code for text in ("wait 1", "wait 2")] == [202, 202]
    answer = submit("one too many")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert answer.json()["error"]["code"] == "async_queue_full"


def test_a_client_keys_jobs_are_its_own(make_bridge, standin: StandIn, tmp_path: Path) -> None:
    alice = keys_command(tmp_path, "create", "alice").stdout.strip()
    bob = keys_command(tmp_path, "create", "bob").stdout.strip()
    process = make_bridge("--enable-async-request", "--enable-shared-mode", "--state-dir",
                          str(tmp_path), env={"BRIDGE_API_KEY": "sk-shared-upstream"})
    fingerprint = new_fingerprint()
    status = process.url + f"/v1/async/{fingerprint}"
    as_alice = {"authorization": f"Bearer {alice}"}
    as_bob = {"authorization": f"Bearer {bob}"}
    unknown = requests.get(status, headers=as_bob, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "request_fingerprint_not_found"
    assert requests.post(process.url + CHAT, json=chat("mine", fingerprint=fingerprint),
                         headers=as_alice, timeout=10).status_code == 202
    answer = requests.get(status, headers=as_bob, timeout=10)
    assert (answer.status_code, answer.content) == (404, unknown.content)
    # bob's request with the same fingerprint is bob's job (not a 409, not alice's)
    bobs = chat("bob's", fingerprint=fingerprint)
    assert requests.post(process.url + CHAT, json=bobs, headers=as_bob,
                         timeout=10).status_code == 202
    done = until_done(status, headers=as_alice)
    assert done.json()["choices"][0]["message"]["content"] == "Echo: mine"
    sent = {name.lower(): value for name, value in standin.requests[-1].headers.items()}
    assert sent["authorization"] == "Bearer sk-shared-upstream"
    assert until_done(process.url + CHAT, bobs, as_bob).json()[
        "choices"][0]["message"]["content"] == "Echo: bob's"
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        stored = db.execute("SELECT owner, headers FROM jobs ORDER BY created").fetchall()
    assert [owner for owner, _ in stored] == ["alice", "bob"]
    assert not any("sk-" in headers for _, headers in stored)


# --- nothing is lost --------------------------------------------------------------------

def test_fifty_jobs_survive_a_kill_of_the_whole_bridge(make_bridge, standin: StandIn,
                                                       tmp_path: Path) -> None:
    flags = ("--enable-async-request", "--state-dir", str(tmp_path))
    standin.configure(token_delay=0.1)  # each job streams for about a second
    process = make_bridge(*flags)
    bodies = {new_fingerprint(): None for _ in range(50)}
    for index, fingerprint in enumerate(bodies):
        bodies[fingerprint] = chat(f"crash job {index}", True, fingerprint)
    with ThreadPoolExecutor(8) as pool:
        accepted = list(pool.map(lambda body: requests.post(
            process.url + CHAT, json=body, timeout=10).status_code, bodies.values()))
    assert accepted == [202] * 50
    wait_for(lambda: standin.count(CHAT) >= 20, 20, "jobs to be running")
    os.killpg(process.pid, signal.SIGKILL)  # master and workers, mid-generation
    process.proc.wait(5)

    restarted = make_bridge(*flags)
    for fingerprint in bodies:
        done = until_done(restarted.url + f"/v1/async/{fingerprint}", timeout=40,
                          fingerprint=fingerprint)
        assert done.status_code == 200
        assert b"[DONE]" in done.content
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        finished = dict(db.execute("SELECT fingerprint, finished FROM jobs"))
    calls: dict[str, list[float]] = {}
    for recorded in standin.requests:
        if recorded.path != CHAT:  # the think filter asks /api/show once per model
            continue
        body = json.loads(recorded.body)
        calls.setdefault(body["messages"][0]["content"], []).append(recorded.time)
    for fingerprint, body in bodies.items():
        times = calls[body["messages"][0]["content"]]
        assert 1 <= len(times) <= 2, f"{fingerprint} computed {len(times)} times"
        assert max(times) < finished[fingerprint], "computed again after its result was stored"


# --- start-up, crashes and stops ----------------------------------------------------------

KILLS = 5


def upstream_calls(standin: StandIn, text: str) -> list[float]:
    """When the stand-in was asked the question `text` (one time per upstream call)."""
    return [recorded.time for recorded in list(standin.requests) if recorded.path == CHAT
            and json.loads(recorded.body)["messages"][0]["content"] == text]


def job_rows(state_dir: Path) -> dict[str, sqlite3.Row]:
    with sqlite3.connect(state_dir / "jobs.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return {row["fingerprint"]: row for row in db.execute("SELECT * FROM jobs")}


def kill_instance(process: Process) -> None:
    """`kill -9` of the master and its workers (the process group it leads)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.proc.wait(10)


def answers_health_at_once(process: Process) -> None:
    """/health on many new connections (so both workers answer some): every one answers.
    The timeout is only a hang guard: a frozen worker never answers at all."""
    for _ in range(20):
        assert requests.get(process.url + "/health", timeout=15).status_code == 200


def test_restarts_after_kill_9_with_jobs_running_and_the_cache_on_all_serve(
        make_bridge, standin: StandIn, tmp_path: Path) -> None:
    state = tmp_path / "state"
    flags = ("--enable-async-request", "--enable-cache", "--cache-dir", str(tmp_path / "cache"),
             "--state-dir", str(state), "-i", "50", "-m", "100")
    standin.configure(first_token_delay=0.3, token_delay=0.2)  # each job streams ~2-3 s
    process = make_bridge(*flags)
    texts: dict[str, str] = {}
    kills_seen: dict[str, int] = {}  # kills since the job was submitted
    for kill in range(KILLS):
        batch = [new_fingerprint() for _ in range(4)]
        for fingerprint in batch:
            texts[fingerprint] = f"restart {kill} {fingerprint}"
            kills_seen[fingerprint] = 0
            assert requests.post(process.url + CHAT, timeout=10, json=chat(
                texts[fingerprint], True, fingerprint)).status_code == 202
        wait_for(lambda: all(upstream_calls(standin, texts[fp]) for fp in batch),  # noqa: B023
                 30, "the new jobs to be running")
        kill_instance(process)
        for fingerprint in kills_seen:
            kills_seen[fingerprint] += 1
        process = make_bridge(*flags)  # its start waits (bounded) for /health to answer
        answers_health_at_once(process)
    for fingerprint in texts:
        done = until_done(process.url + f"/v1/async/{fingerprint}", timeout=60,
                          fingerprint=fingerprint)
        assert done.status_code == 200 and b"[DONE]" in done.content
    rows = job_rows(state)
    for fingerprint, text in texts.items():
        allowed = 1 + kills_seen[fingerprint]  # at most one extra run per kill
        assert rows[fingerprint]["attempts"] <= allowed, fingerprint
        assert len(upstream_calls(standin, text)) <= allowed


def test_a_job_whose_instance_was_killed_resumes_at_once_as_one_crash(
        make_bridge, standin: StandIn, tmp_path: Path) -> None:
    state, cache = tmp_path / "state", tmp_path / "cache"
    # shared mode: every request shares the cache (a fresh pass-through instance would let
    # the job's second run go upstream on its own, never meeting the stale flight lease)
    flags = ("--enable-async-request", "--enable-cache", "--cache-dir", str(cache),
             "--state-dir", str(state), "--enable-shared-mode")
    env = {"BRIDGE_API_KEY": "sk-shared-upstream"}
    standin.configure(token_delay=0.3)  # the job streams for a few seconds
    process = make_bridge(*flags, env=env)
    fingerprint = new_fingerprint()
    text = f"crash once {fingerprint}"
    assert requests.post(process.url + CHAT, json=chat(text, True, fingerprint),
                         timeout=10).status_code == 202
    wait_for(lambda: upstream_calls(standin, text), 30, "the job to be running")
    # the leases the dead worker leaves behind: of the job, and of its cache flight
    job_lease = job_rows(state)[fingerprint]["lease_until"]
    with sqlite3.connect(cache / "responses.sqlite") as db:
        flight_lease = db.execute("SELECT MAX(expires) FROM cache_flights").fetchone()[0]
    assert flight_lease is not None
    kill_instance(process)

    restarted = make_bridge(*flags, env=env)
    standin.configure(token_delay=0.0)
    done = until_done(restarted.url + f"/v1/async/{fingerprint}", timeout=60,
                      fingerprint=fingerprint)
    assert done.status_code == 200 and b"[DONE]" in done.content
    calls = upstream_calls(standin, text)
    assert len(calls) == 2
    # run again before either lease could have run out: both were seen to be dead
    assert calls[1] < min(job_lease, flight_lease)
    assert job_rows(state)[fingerprint]["attempts"] == 2  # one crash


def test_a_draining_bridge_claims_nothing_and_hands_back_what_it_cannot_finish(
        make_bridge, standin: StandIn, tmp_path: Path) -> None:
    # one worker with one upstream slot: one job runs, the next one waits
    flags = ("--enable-async-request", "--state-dir", str(tmp_path), "--max-concurrency", "1")
    process = make_bridge(*flags, "--drain-delay", "0", "--graceful-timeout", "3000",
                          workers=1, graceful_stop=True)
    long_job, queued_job = new_fingerprint(), new_fingerprint()
    long_text, queued_text = f"long {long_job}", f"queued {queued_job}"
    assert requests.post(process.url + CHAT, json=chat(long_text, True, long_job), timeout=10,
                         headers={"x-standin-token-delay": "2.0"}).status_code == 202
    wait_for(lambda: upstream_calls(standin, long_text), 30, "the long job to be running")
    assert requests.post(process.url + CHAT, json=chat(queued_text, True, queued_job),
                         timeout=10).status_code == 202
    assert process.stop(timeout=30) == 0  # SIGTERM: drain, then a graceful stop

    rows = job_rows(tmp_path)
    assert upstream_calls(standin, queued_text) == []  # never claimed while draining
    assert (rows[queued_job]["status"], rows[queued_job]["attempts"]) == ("queued", 0)
    # cut at the stop deadline, handed back uncounted (not a crash)
    assert (rows[long_job]["status"], rows[long_job]["attempts"]) == ("queued", 0)
    assert "handed back unfinished" in process.log()

    restarted = make_bridge(*flags, workers=1)
    for fingerprint in (long_job, queued_job):
        done = until_done(restarted.url + f"/v1/async/{fingerprint}", timeout=90,
                          fingerprint=fingerprint)
        assert done.status_code == 200 and b"[DONE]" in done.content
    rows = job_rows(tmp_path)
    assert rows[long_job]["attempts"] == rows[queued_job]["attempts"] == 1
