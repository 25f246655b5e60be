"""The usage ledger and budgets end to end: real gunicorn bridges (2 gevent workers) in
shared mode in front of the stand-in, the `openai` SDK, the `ollama` client and
`requests` as users, keys made and changed with the real `keys` command, the ledger read
back with `keys usage` as an operator would."""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import anthropic
import ollama
import openai
import pytest
import requests
from helpers import keys_command, metric_total, wait_for

from bridge.ollama_standin import StandIn, StandInConfig
from bridge.serve.processes import Process, start_bridge

UPSTREAM_KEY = "sk-upstream-" + secrets.token_hex(16)
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
WAIT = 20.0  # the ledger flushes every second; a loaded machine may take longer


@dataclass
class Shared:
    process: Process
    home: Path
    state_dir: Path
    keys: dict[str, str]

    def flags(self) -> tuple[str, ...]:
        return ("--enable-shared-mode", "--api-key-file", str(self.home / "upstream.key"),
                "--state-dir", str(self.state_dir), "--enable-cache", "--cache-dir",
                str(self.home / "cache"))


def create_key(state_dir: Path, name: str, *flags: str) -> str:
    done = keys_command(state_dir, "create", name, *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def usage_json(state_dir: Path, *args: str, redis: tuple[str, ...] = ()) -> dict:
    done = keys_command(state_dir, *redis, "usage", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def per_model(report: dict, key: str) -> dict[str, tuple[int, int, int]]:
    return {row["model"]: (row["requests"], row["prompt_tokens"], row["completion_tokens"])
            for row in report["usage"] if row["key"] == key}


@pytest.fixture(scope="module")
def shared(standin_server: StandIn, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Shared]:
    home = tmp_path_factory.mktemp("usage")
    state_dir = home / "state"
    (home / "upstream.key").write_text(UPSTREAM_KEY + "\n")
    keys = {"alice": create_key(state_dir, "alice"),
            "capped": create_key(state_dir, "capped", "--budget-tokens", "1",
                                 "--budget-period", "day"),
            "monthly": create_key(state_dir, "monthly", "--budget-tokens", "1")}
    shared = Shared(None, home, state_dir, keys)  # type: ignore[arg-type]
    shared.process = start_bridge(*shared.flags(), upstream=standin_server.url, workers=2,
                                  log_dir=home)
    try:
        yield shared
    finally:
        shared.process.stop()  # the one running last (a test restarts it)


def sdk(bridge: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=bridge.url + "/v1", api_key=key, max_retries=0)


def chat_openai(bridge: Process, key: str, text: str | None = None) -> tuple[int, int]:
    answer = sdk(bridge, key).chat.completions.create(
        model="qwen3", messages=[{"role": "user", "content": text or uuid.uuid4().hex}])
    assert answer.usage is not None
    return answer.usage.prompt_tokens, answer.usage.completion_tokens


def chat_ollama(bridge: Process, key: str) -> tuple[int, int]:
    client = ollama.Client(host=bridge.url, headers={"authorization": f"Bearer {key}"})
    *_, last = client.chat(model="llama3.2", stream=True,
                           messages=[{"role": "user", "content": uuid.uuid4().hex}])
    assert last is not None and last.done
    return last.prompt_eval_count, last.eval_count


def test_a_keys_usage_per_model_is_what_the_upstream_reported_and_survives_a_restart(
        shared: Shared, standin_server: StandIn, tmp_path: Path) -> None:
    key = shared.keys["alice"]
    expected: dict[str, list[int]] = {"qwen3": [0, 0, 0], "llama3.2": [0, 0, 0]}
    for _ in range(3):
        prompt, completion = chat_openai(shared.process, key)
        expected["qwen3"] = [expected["qwen3"][0] + 1, expected["qwen3"][1] + prompt,
                             expected["qwen3"][2] + completion]
    for _ in range(2):
        prompt, completion = chat_ollama(shared.process, key)
        expected["llama3.2"] = [expected["llama3.2"][0] + 1, expected["llama3.2"][1] + prompt,
                                expected["llama3.2"][2] + completion]
    assert all(counts[1] and counts[2] for counts in expected.values())
    wanted = {model: tuple(counts) for model, counts in expected.items()}
    wait_for(lambda: per_model(usage_json(shared.state_dir, "alice"), "alice") == wanted,
             WAIT, f"keys usage alice showing {wanted}")

    # a restart (same state directory) keeps it, and goes on adding
    shared.process.stop()
    shared.process = start_bridge(*shared.flags(), upstream=standin_server.url, workers=2,
                                  log_dir=tmp_path)
    prompt, completion = chat_openai(shared.process, key)
    qwen3 = (wanted["qwen3"][0] + 1, wanted["qwen3"][1] + prompt,
             wanted["qwen3"][2] + completion)
    wait_for(lambda: per_model(usage_json(shared.state_dir), "alice")
             == {**wanted, "qwen3": qwen3}, WAIT, "usage added after a restart")
    text = keys_command(shared.state_dir, "usage", "alice")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[1].split()[:6] == ["KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION",
                                    "ESTIMATED"]
    assert ["alice", "qwen3", *map(str, qwen3), "0"] in [line.split()[:6] for line in lines]
    bad = keys_command(shared.state_dir, "usage", "--since", "2026-13-01")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().endswith("bad day '2026-13-01': give a UTC day as YYYY-MM-DD, "
                                       "e.g. 2026-01-31")


def test_a_key_at_its_budget_is_refused_on_a_miss_and_served_on_a_hit(
        shared: Shared) -> None:
    bridge, key = shared.process, shared.keys["capped"]
    question = f"budget {uuid.uuid4().hex}"
    _, answered = chat_openai(bridge, key, question)  # spends more than its 1 token

    [answer] = wait_for(lambda: refused(bridge, key), WAIT, "the budget to be used up")
    error = answer.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert set(error) == {"message", "type", "param", "code"}
    assert 0 < int(answer.headers["retry-after"]) <= 86400  # until midnight UTC

    [native] = wait_for(lambda: refused(bridge, key, "/api/chat"), WAIT, "Ollama's 429")
    claude = anthropic.Anthropic(base_url=bridge.url, api_key=key, max_retries=0)

    def claude_refused() -> object:
        try:
            claude.messages.create(model="qwen3", max_tokens=50, messages=[
                {"role": "user", "content": uuid.uuid4().hex}])
        except anthropic.RateLimitError as refusal:
            return refusal.body
        return None
    body = wait_for(claude_refused, WAIT, "Anthropic's 429")
    # shapes without a code field say it first in the message
    assert body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert body["error"]["message"].startswith("budget_exceeded: ")  # type: ignore[index]
    assert native.json()["error"].startswith("budget_exceeded: token budget of 'capped'")
    assert 0 < int(native.headers["retry-after"]) <= 86400

    hit = requests.post(bridge.url + "/v1/chat/completions", timeout=30,
                        headers={"authorization": f"Bearer {key}"},
                        json={"model": "qwen3", "messages": [
                            {"role": "user", "content": question}]})
    assert hit.status_code == 200 and hit.headers["x-cache"].startswith("HIT")

    assert metric_total(bridge.url, "bridge_client_budget_remaining_tokens",
                        client_key="capped") == 0

    def capped_status() -> dict | None:  # each worker keeps its section for 1.5 s
        usage = requests.get(bridge.url + "/status", timeout=30).json()["usage"]
        item = next(item for item in usage if item["key"] == "capped")
        return item if item["cache_hits"] else None
    item = wait_for(capped_status, WAIT, "the hit in /status")
    assert (item["budget_tokens"], item["budget_period"]) == (1, "day")
    assert item["remaining_tokens"] == 0 and item["used_tokens"] > 1
    assert item["requests"] >= 2 and item["top_models"][0]["model"] == "qwen3"
    # the hit saved the tokens the upstream generated for it, and its seconds
    assert (item["cache_hits"], item["saved_tokens"]) == (1, answered)
    assert item["saved_seconds"] > 0

    # a budget raised with `keys update` applies to the running bridge
    done = keys_command(shared.state_dir, "update", "capped", "--budget-tokens", "1000000",
                        "--budget-period", "day")
    assert done.returncode == 0, done.stderr
    assert chat_openai(bridge, key)
    report = usage_json(shared.state_dir, "capped")
    assert report["budgets"][0]["budget_tokens"] == 1000000


@pytest.mark.skipif(shutil.which("faketime") is None or not FAKETIME_LIB.exists(),
                    reason="needs Debian's faketime (.ci/run installs it)")
def test_the_next_period_lets_a_key_through(shared: Shared, standin_server: StandIn,
                                            tmp_path: Path) -> None:
    key = shared.keys["monthly"]
    chat_openai(shared.process, key)  # over its 1 token a month
    wait_for(lambda: refused(shared.process, key), WAIT, "the monthly budget to be used up")
    # a bridge started now (same state directory) refuses it from its first request...
    shared.process.stop()
    shared.process = start_bridge(*shared.flags(), upstream=standin_server.url, workers=2,
                                  log_dir=tmp_path)
    assert refused(shared.process, key) and refused(shared.process, key)
    # ...and one started 32 days later serves it: a new calendar month
    with start_bridge(*shared.flags(), upstream=standin_server.url, workers=1, log_dir=tmp_path,
                      env={"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": "+32d"}) as later:
        assert chat_openai(later, key)


def test_without_shared_mode_one_row_per_credential_digest_under_the_default_budget(
        standin_server: StandIn, tmp_path: Path) -> None:
    """Under the instance-wide budget: a miss spends it, the next miss is refused, and
    repeats of the hit are still served, counted as the hits they are (also those
    answered before the pipeline while they come quickly: `bridge.web.fast_hits`)."""
    credential = "sk-client-" + secrets.token_hex(16)
    repeats = 20
    default = ("--budget-tokens", "1", "--budget-period", "week")  # the instance-wide budget
    with start_bridge("--state-dir", str(tmp_path / "state"), *default, "--enable-cache",
                      "--cache-dir", str(tmp_path / "cache"), upstream=standin_server.url,
                      workers=1, log_dir=tmp_path) as bridge:
        body = {"model": "qwen3", "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
        with requests.Session() as session:
            def ask() -> requests.Response:
                return session.post(bridge.url + "/v1/chat/completions", json=body,
                                    headers={"authorization": f"Bearer {credential}"},
                                    timeout=30)
            assert ask().headers["x-cache"] == "MISS"  # spends more than the 1 token
            [answer] = wait_for(lambda: refused(bridge, credential), WAIT, "the default budget")
            assert answer.json()["error"]["code"] == "budget_exceeded"
            hits = [ask() for _ in range(repeats)]  # over budget: hits are still served
        assert [(hit.status_code, hit.headers["x-cache"]) for hit in hits] == \
            [(200, "HIT-MEMORY")] * repeats
        ledger = tmp_path / "state" / "usage.sqlite3"

        def rows() -> list:
            try:
                with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
                    return db.execute("SELECT principal, model, requests, cache_hits, "
                                      "saved_tokens FROM usage_daily").fetchall()
            except sqlite3.OperationalError:  # not made yet
                return []
        found = wait_for(lambda: [row for row in rows() if row[3] == repeats], WAIT,
                         "every hit")
        assert len(rows()) == 1 and found[0][0].startswith("cred:")
        metrics = requests.get(bridge.url + "/metrics", timeout=30).text
        saved = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("bridge_cache_tokens_saved_total"))
        assert found[0][3:] == (repeats, saved) and saved > 0  # what the metrics count
        status = requests.get(bridge.url + "/status", timeout=30).json()
        assert budget_views(status["usage"]) == [(found[0][0], 1, "week", 0)]
    # `keys usage` reads the default budget as the server does (flag or BRIDGE_BUDGET_TOKENS)
    assert budget_views(usage_json(tmp_path / "state", *default)["budgets"]) \
        == [(found[0][0], 1, "week", 0)]
    for path in (tmp_path / "state").iterdir():
        assert credential.encode() not in path.read_bytes()


def test_a_stream_the_upstream_did_not_count_is_estimated_near_its_tokens_and_marked(
        tmp_path: Path) -> None:
    upstream = StandIn(StandInConfig(kind="openai")).start()  # usage only when asked for
    question = [{"role": "user", "content": "count me " * 20}]
    try:
        counted = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-x").chat \
            .completions.create(model="llama3.2", messages=question).usage
        assert counted is not None and counted.completion_tokens > 5
        with start_bridge("--upstream-api", "openai", "--state-dir", str(tmp_path / "state"),
                          upstream=upstream.url, workers=1, log_dir=tmp_path) as bridge:
            stream = sdk(bridge, "sk-client-" + secrets.token_hex(8)).chat.completions.create(
                model="llama3.2", messages=question, stream=True)
            assert all(chunk.usage is None for chunk in stream)

            def estimated() -> list[dict]:
                return [row for row in usage_json(tmp_path / "state")["usage"]
                        if row["estimated"] == 1]
            [row] = wait_for(estimated, WAIT, "the estimated row")
    finally:
        upstream.stop()
    # a frame per token, give or take the role, finish and [DONE] frames (not the bytes of
    # the frames' JSON: ten times as many)
    assert counted.completion_tokens <= row["completion_tokens"] \
        <= counted.completion_tokens + 3
    assert row["requests"] == 1 and row["prompt_tokens"] > 0


def budget_views(items: list[dict]) -> list[tuple]:
    """Who has which budget, and what is left of it."""
    return [(item["key"], item["budget_tokens"], item["budget_period"],
             item["remaining_tokens"]) for item in items]


def refused(bridge: Process, key: str, path: str = "/v1/chat/completions"
            ) -> list[requests.Response]:
    """A miss sent with `key` (OpenAI's chat, or Ollama's at /api/chat), in a list when
    it got 429 (a 429 Response is falsy). Each worker learns the totals on its own, within
    a second: a refusal by one says nothing of the other."""
    answer = requests.post(bridge.url + path, timeout=30,
                           headers={"authorization": f"Bearer {key}"},
                           json={"model": "qwen3", "stream": False, "messages": [
                               {"role": "user", "content": uuid.uuid4().hex}]})
    return [answer] if answer.status_code == 429 else []


def test_two_instances_on_one_redis_add_up_and_enforce_one_budget(
        standin_server: StandIn, redis_server: Process, tmp_path: Path) -> None:
    prefix = ("--redis-prefix", f"test-{uuid.uuid4().hex[:8]}")
    redis = ("--redis-url", redis_server.url, *prefix)
    key = create_key(tmp_path / "a", "team")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "keys.sqlite3", tmp_path / "b")  # the same keys, as README says
    (tmp_path / "upstream.key").write_text(UPSTREAM_KEY + "\n")

    def start(state: str) -> Process:
        return start_bridge("--enable-shared-mode", "--api-key-file",
                            str(tmp_path / "upstream.key"), "--state-dir", str(tmp_path / state),
                            "--redis-timeout", "1000", *redis, upstream=standin_server.url,
                            workers=1, log_dir=tmp_path)
    with start("a") as a, start("b") as b:
        spent = [chat_openai(bridge, key) for bridge in (a, b, a)]
        wanted = {"qwen3": (3, sum(p for p, _ in spent), sum(c for _, c in spent))}
        wait_for(lambda: per_model(usage_json(tmp_path / "a", redis=redis), "team") == wanted,
                 WAIT, "the fleet's sums in Redis")
        # a budget set through instance a's store reaches b, counted against the fleet's use
        done = keys_command(tmp_path / "a", *redis, "update", "team", "--budget-tokens",
                            str(sum(p + c for p, c in spent)), "--budget-period", "week")
        assert done.returncode == 0, done.stderr
        [answer] = wait_for(lambda: refused(b, key), WAIT, "b refusing the team's key")
        assert answer.json()["error"]["code"] == "budget_exceeded"
