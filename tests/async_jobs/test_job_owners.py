"""Async jobs belong to their principal, end to end: real gunicorn bridges (2 gevent
workers, pass-through mode, the cache on) in front of a stand-in that wants the key
`sk-good`, with the SQLite job store and with the Redis one (a real `redis-server` on a
free port). Another principal's job does not exist for a client; credentials, query
parameters included, stay in the store only while a job waits or runs."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis
import requests
from test_async_jobs import CHAT, chat, new_fingerprint, until_done

from bridge.ollama_standin import StandIn
from bridge.serve.processes import ROOT, Process, start_bridge, start_redis

GOOD_KEY = "sk-good"
GOOD = {"authorization": f"Bearer {GOOD_KEY}"}
WRONG = {"authorization": "Bearer sk-wrong-0123456789"}
SLOW = {"x-standin-token-delay": "0.05"}
STORES = ["sqlite", pytest.param("redis", marks=pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs Debian's redis-server"))]


class Bridge:
    """A bridge and where it keeps its jobs."""

    def __init__(self, process: Process, state_dir: Path, redis_url: str | None,
                 prefix: str):
        self.process, self.url, self.state_dir = process, process.url, state_dir
        self.redis_url, self.prefix = redis_url, prefix

    def stored_bytes(self) -> bytes:
        """Everything the job stores hold: the SQLite files and, with Redis, every value
        of every key under the bridge's prefix."""
        kept = b"".join(path.read_bytes() for path in self.state_dir.glob("jobs.sqlite3*"))
        if self.redis_url is not None:
            client = redis.Redis.from_url(self.redis_url)
            for key in client.scan_iter(f"{self.prefix}:*"):
                kind = client.type(key)
                if kind == b"hash":
                    kept += b"".join(key + b"".join(pair) for pair in
                                     client.hgetall(key).items())
                elif kind == b"zset":
                    kept += key + b"".join(client.zrange(key, 0, -1))
                else:
                    kept += key + (client.dump(key) or b"")
        return kept

    def jobs_command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bridge", "jobs", "--state-dir",
                               str(self.state_dir), *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    if shutil.which("redis-server") is None:
        yield None
        return
    with start_redis(tmp_path_factory.mktemp("redis")) as process:
        yield process.url


@pytest.fixture(scope="module", params=STORES)
def bridge(request: pytest.FixtureRequest, standin_server: StandIn,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    state_dir = tmp_path_factory.mktemp("owners-state")
    prefix = f"owners-{uuid.uuid4().hex[:8]}"
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    shared = ("--redis-timeout", "1000", "--redis-prefix", prefix, "--redis-url", url) \
        if url else ()
    with start_bridge("--enable-async-request", "--enable-cache", "--cache-dir",
                      str(tmp_path_factory.mktemp("owners-cache")), "--state-dir",
                      str(state_dir), "-i", "50", "-m", "100", *shared,
                      upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("owners-bridge")) as process:
        yield Bridge(process, state_dir, url, prefix)


@pytest.fixture
def keyed(standin: StandIn) -> StandIn:
    """The stand-in as an upstream that wants `sk-good` (401 otherwise)."""
    standin.configure(api_key=GOOD_KEY)
    return standin


def status_url(bridge: Bridge, fingerprint: str, surface: str = "/v1") -> str:
    return f"{bridge.url}{surface}/async/{fingerprint}"


def run_job(bridge: Bridge, body: dict, headers: dict, url: str = "") -> requests.Response:
    """Submit `body` as the principal of `headers`: a 202, then (sent again until the job
    ended) its answer."""
    url = url or bridge.url + CHAT
    accepted = requests.post(url, json=body, headers={**headers, **SLOW}, timeout=10)
    assert accepted.status_code == 202, accepted.text
    return until_done(url, body, headers, fingerprint=body["request_fingerprint"])


def not_found(answer: requests.Response) -> tuple:
    """What a client can compare between two 404s (not the request id)."""
    return answer.status_code, answer.headers["content-type"], answer.content


def test_another_principal_finds_nothing_at_the_status_url(bridge: Bridge,
                                                            keyed: StandIn) -> None:
    fingerprint = new_fingerprint()
    unknown = {surface: not_found(requests.get(status_url(bridge, fingerprint, surface),
                                               timeout=10)) for surface in ("/v1", "/api")}
    assert unknown["/v1"][0] == 404
    body = chat(f"owned {fingerprint}", fingerprint=fingerprint)
    assert requests.post(bridge.url + CHAT, json=body, headers={**GOOD, **SLOW},
                         timeout=10).status_code == 202
    others = ({}, WRONG, {"x-api-key": GOOD_KEY}, {**GOOD, "x-api-key": "extra"})
    for surface in ("/v1", "/api"):  # while the job runs, and once it is done
        for headers in others:
            answer = requests.get(status_url(bridge, fingerprint, surface), headers=headers,
                                  timeout=10)
            assert not_found(answer) == unknown[surface], headers
    done = until_done(status_url(bridge, fingerprint), headers=GOOD, fingerprint=fingerprint)
    assert done.status_code == 200
    assert done.json()["choices"][0]["message"]["content"] == f"Echo: owned {fingerprint}"
    for surface in ("/v1", "/api"):
        for headers in others:
            answer = requests.get(status_url(bridge, fingerprint, surface), headers=headers,
                                  timeout=10)
            assert not_found(answer) == unknown[surface], headers


def test_another_principal_resubmitting_gets_its_own_job_not_the_result(
        bridge: Bridge, keyed: StandIn) -> None:
    fingerprint = new_fingerprint()
    body = chat(f"resubmitted {fingerprint}", fingerprint=fingerprint)
    done = run_job(bridge, body, GOOD)
    assert done.status_code == 200
    for headers in ({}, WRONG):  # a job of its own (a 202): nothing says the other exists
        refused = run_job(bridge, body, headers)
        assert refused.status_code == 401, refused.text
        assert b"Echo" not in refused.content
    # the owner's result is still there, and still its own
    again = requests.post(bridge.url + CHAT, json=body, headers=GOOD, timeout=10)
    assert again.status_code == 200 and again.content == done.content


def test_the_same_fingerprint_from_two_principals_is_two_jobs(bridge: Bridge,
                                                              keyed: StandIn) -> None:
    fingerprint = new_fingerprint()
    # two principals the upstream both accepts: the same key, one with a query credential
    # too (which the upstream gets, as it would synchronously)
    one = chat(f"first client {fingerprint}", fingerprint=fingerprint)
    two = chat(f"second client {fingerprint}", True, fingerprint)
    second_url = bridge.url + CHAT + "?key=client-two-" + fingerprint
    first = run_job(bridge, one, GOOD)
    second = run_job(bridge, two, GOOD, second_url)  # not a 409: another principal's
    assert first.json()["choices"][0]["message"]["content"] == f"Echo: first client {fingerprint}"
    assert second.headers["content-type"].startswith("text/event-stream")
    assert b"second" in second.content and b"first" not in second.content
    assert requests.get(status_url(bridge, fingerprint), headers=GOOD,
                        timeout=10).content == first.content
    # the status URL with the query credential is the second principal's
    at_second = requests.get(status_url(bridge, fingerprint) + "?key=client-two-" + fingerprint,
                             headers=GOOD, timeout=10)
    assert at_second.status_code == 200 and at_second.content == second.content
    sent = [seen for seen in keyed.requests if fingerprint.encode() in seen.body]
    assert sorted(seen.query for seen in sent) == ["", f"key=client-two-{fingerprint}"]
    if bridge.redis_url is None:  # `jobs` reads the local store only
        listed = json.loads(bridge.jobs_command("list", "--json").stdout)
        owners = {job["owner"] for job in listed if job["fingerprint"] == fingerprint}
        assert len(owners) == 2 and all(owner.startswith("cred:") for owner in owners)


def test_query_credentials_leave_the_store_when_the_job_ends(bridge: Bridge,
                                                             keyed: StandIn) -> None:
    secret = f"query-secret-{uuid.uuid4().hex}"
    fingerprint = new_fingerprint()
    body = chat(f"query key {fingerprint}", True, fingerprint)
    done = run_job(bridge, body, GOOD, f"{bridge.url}{CHAT}?trace=1&key={secret}")
    assert done.status_code == 200 and b"[DONE]" in done.content
    sent = [seen for seen in keyed.requests if fingerprint.encode() in seen.body]
    assert len(sent) == 1 and f"key={secret}" in sent[0].query  # put back for the run
    kept = bridge.stored_bytes()
    assert fingerprint.encode() in kept  # the job is still there, with its result
    assert secret.encode() not in kept and GOOD_KEY.encode() not in kept
    for path in bridge.state_dir.glob("jobs.sqlite3*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert secret not in bridge.process.log()
    if bridge.redis_url is None:  # `jobs` reads the local store only
        shown = bridge.jobs_command("show", fingerprint)
        assert shown.returncode == 0, shown.stderr
        job = json.loads(shown.stdout)[0]
        assert job["query"] == "trace=1" and not job["holds_credential"]
        assert job["owner"].startswith("cred:") and secret not in shown.stdout
        assert GOOD_KEY not in shown.stdout


def test_a_wrong_keys_401_is_not_the_right_keys_answer(bridge: Bridge,
                                                       keyed: StandIn) -> None:
    fingerprint = new_fingerprint()
    body = chat(f"fixed key {fingerprint}", fingerprint=fingerprint)
    assert run_job(bridge, body, WRONG).status_code == 401
    # the right key, same fingerprint and body: a job of its own, and the real answer
    done = run_job(bridge, body, GOOD)
    assert done.status_code == 200
    assert done.json()["choices"][0]["message"]["content"] == f"Echo: fixed key {fingerprint}"
    # a refusal is answered once, not kept: the wrong key asking again runs again
    assert run_job(bridge, body, WRONG).status_code == 401
    assert requests.get(status_url(bridge, fingerprint), headers=WRONG,
                        timeout=10).status_code == 404
