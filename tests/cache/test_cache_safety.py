"""The cache's correctness under bad input, failing leaders, stored streams with null
fields, upstreams that check credentials, a moved upstream and shared admission slots,
through real gunicorn bridges in front of the stand-in."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from helpers import show_upstream_is_open, wait_for

from bridge.cache.disk import FILE_NAME, bulk_insert
from bridge.cache.entry import Entry
from bridge.cache.keys import cache_key
from bridge.cache.stage import LEASE_SECONDS
from bridge.ollama_standin import Fault

MODEL = "qwen3"
CHAT = "/v1/chat/completions"


def enable(cache_dir: Path, *flags: str) -> tuple[str, ...]:
    return ("--enable-cache", "--cache-dir", str(cache_dir), *flags)


def chat(q: str, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": q}], **fields}


def post(bridge, body, path=CHAT, headers=None, timeout=20, **kwargs) -> requests.Response:
    return requests.post(bridge.url + path, json=body, headers=headers, timeout=timeout,
                         **kwargs)


def raw_post(bridge, text: str, path: str) -> requests.Response:
    """A body sent as written (lone surrogate escapes cannot be built with `json=`)."""
    return requests.post(bridge.url + path, data=text.encode(), timeout=20,
                         headers={"content-type": "application/json"})


# --- 1. one bad request does not block a conversation ----------------------------------


def test_lone_surrogates_are_a_400_and_block_nothing(standin, make_bridge, tmp_path):
    bridge = make_bridge(*enable(tmp_path))
    q = f"hello {uuid.uuid4().hex[:6]}"
    for path, stream in (("/api/chat", '"\\ud800"'), (CHAT, '"\\udfff"')):
        bad = raw_post(bridge, '{"model":"qwen2.5","messages":[{"role":"user","content":'
                       f'"{q}"}}],"stream":{stream}}}', path)
        assert bad.status_code == 400, bad.text
        error = bad.json()["error"]
        assert "surrogate" in (error if path == "/api/chat" else error["message"])
        # the same conversation, asked properly, on each worker: answered at once
        for _ in range(4):
            fine = post(bridge, {"model": "qwen2.5", "messages": [{"role": "user", "content": q}],
                                 "stream": False}, path=path, headers={"Connection": "close"},
                        timeout=10)
            assert fine.status_code == 200
    in_content = raw_post(bridge, '{"model":"qwen3","messages":[{"role":"user",'
                          '"content":"a \\ud83d b"}]}', CHAT)
    in_model = raw_post(bridge, '{"model":"q\\udc00","prompt":"hi"}', "/api/generate")
    assert (in_content.status_code, in_model.status_code) == (400, 400)
    paired = raw_post(bridge, '{"model":"qwen3","messages":[{"role":"user",'
                      '"content":"a \\ud83d\\ude00 b"}]}', CHAT)
    assert paired.status_code == 200 and "\U0001F600" in paired.json()["choices"][0][
        "message"]["content"]
    assert "Traceback" not in bridge.log()


def test_a_failing_leader_wakes_its_followers_at_once(standin, make_bridge, tmp_path):
    bridge = make_bridge(*enable(tmp_path, "--retry-attempts", "0"), workers=1)
    show_upstream_is_open(bridge)
    body = chat(f"fails {uuid.uuid4().hex[:6]}")
    standin.push_fault(Fault("status", status=500, delay=1.0))

    def ask(_i: int) -> tuple[int, str]:
        response = post(bridge, body, timeout=10)
        return response.status_code, response.headers.get("x-cache", "")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert sorted(status for status, _ in answers) == [500] * 4  # the leader's error, shared
    assert sorted(cache for _, cache in answers) == ["HIT-FLIGHT"] * 3 + ["MISS"]
    assert standin.count(CHAT) == 2
    assert post(bridge, body, timeout=10).status_code == 200  # nothing stays held


def test_a_lease_left_behind_expires_on_its_own(standin, make_bridge, tmp_path):
    bridge = make_bridge(*enable(tmp_path), workers=1)
    body = chat(f"leased {uuid.uuid4().hex[:6]}")
    key = cache_key("openai", "chat", body, upstream=standin.url)
    # held by a live process that stopped renewing it (this one: it never will)
    with contextlib.closing(sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)) as db:
        db.execute("INSERT INTO cache_flights (key, pid, expires) VALUES (?, ?, ?)",
                   (key, os.getpid(), time.time() + LEASE_SECONDS))
    answer = post(bridge, body, timeout=LEASE_SECONDS + 10)  # not the whole -t (300 s)
    assert answer.status_code == 200 and answer.headers["x-cache"] == "MISS"


# --- 2. stored streams with null fields, tool calls and logprobs ----------------------


def test_null_fields_in_a_stored_stream_assemble(standin, make_bridge, tmp_path):
    bridge = make_bridge(*enable(tmp_path, "--disable-think-filter"))
    standin.configure(shape="nulls", think="reasoning_content")
    body = chat(f"nulls {uuid.uuid4().hex[:6]}")
    streamed = post(bridge, {**body, "stream": True})
    assert streamed.status_code == 200 and '"reasoning_content":null' in streamed.text
    for _ in range(3):
        whole = post(bridge, body)
        assert whole.status_code == 200, whole.text
        message = whole.json()["choices"][0]["message"]
        assert message["content"].startswith("Echo: ") and message["reasoning_content"]
    assert standin.count(CHAT) == 1


def _sse_entry(objects: list[dict]) -> Entry:
    return Entry("openai", "chat", MODEL, time.time(), codec="sse",
                 frames=(*(json.dumps(obj).encode() for obj in objects), b"[DONE]"))


def test_tool_calls_and_logprobs_survive_assembly(standin, make_bridge, tmp_path):
    def chunk(delta: dict, finish=None, logprobs=None) -> dict:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": MODEL, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                             "finish_reason": finish}]}

    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": ""}}
    tools = chat("weather in Paris?", tools=[{"type": "function", "function": {
        "name": "weather", "parameters": {"type": "object"}}}], logprobs=True)
    stored = [chunk({"role": "assistant", "content": None, "tool_calls": None}),
              chunk({"tool_calls": [call]}, logprobs={"content": None}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                    logprobs={"content": [{"token": '{"city":', "logprob": -0.5}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                    logprobs={"content": [{"token": '"Paris"}', "logprob": -0.25}]}),
              chunk({}, "tool_calls")]
    bulk_insert(tmp_path, [(cache_key("openai", "chat", tools, upstream=standin.url),
                            _sse_entry(stored))])
    bridge = make_bridge(*enable(tmp_path))
    show_upstream_is_open(bridge)
    whole = post(bridge, tools)
    assert whole.status_code == 200 and whole.headers["x-cache"] == "HIT-DISK"
    choice = whole.json()["choices"][0]
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "weather",
                                                              "arguments": '{"city":"Paris"}'}
    assert [item["token"] for item in choice["logprobs"]["content"]] == ['{"city":', '"Paris"}']
    assert choice["finish_reason"] == "tool_calls"


# --- 3. hits only for those the upstream would answer ---------------------------------


def test_hits_go_only_to_credentials_the_upstream_accepted(standin, make_bridge, tmp_path):
    standin.configure(api_key="sk-good", first_token_delay=0.5)
    bridge = make_bridge(*enable(tmp_path))
    body = chat(f"paid {uuid.uuid4().hex[:6]}")
    good = {"Authorization": "Bearer sk-good"}
    wrong = {"Authorization": "Bearer sk-wrong"}
    with ThreadPoolExecutor(2) as pool:  # a wrong key does not join a good key's flight
        leader = pool.submit(post, bridge, body, headers=good)
        time.sleep(0.2)
        intruder = pool.submit(post, bridge, body, headers=wrong)
        assert leader.result().status_code == 200
        assert intruder.result().status_code == 401
    for _ in range(4):  # either worker: the upstream's 401, never the stored answer
        for headers in (wrong, {}, {"Authorization": "Bearer "}):
            refused = post(bridge, body, headers={**headers, "Connection": "close"})
            assert refused.status_code == 401 and refused.headers["x-cache"] == "MISS"
    hit = post(bridge, body, headers=good)
    assert hit.status_code == 200 and hit.headers["x-cache"].startswith("HIT-")
    assert standin.count(CHAT) == 1 + 1 + 4 * 3
    cache_files = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
    assert b"sk-good" not in cache_files and b"sk-wrong" not in cache_files


def test_shared_mode_shares_as_before(standin, make_bridge, tmp_path):
    standin.configure(api_key="sk-upstream")
    bridge = make_bridge(*enable(tmp_path, "--enable-shared-mode"),
                         env={"BRIDGE_API_KEY": "sk-upstream"})
    body = chat(f"shared {uuid.uuid4().hex[:6]}")
    assert post(bridge, body).headers["x-cache"] == "MISS"
    assert post(bridge, body, headers={"Authorization": "Bearer whatever"}).headers[
        "x-cache"].startswith("HIT-")
    assert standin.count(CHAT) == 1


# --- 4. the disk file heals itself -------------------------------------------------------


def _corrupt_pages(path: Path) -> None:
    """Damage pages past the header of a valid SQLite file, as a bad disk would."""
    data = bytearray(path.read_bytes())
    for offset in range(4096 * 2, len(data), 4096 * 2):
        data[offset:offset + 1000] = os.urandom(1000)
    path.write_bytes(bytes(data))


def _filled(cache_dir: Path, standin) -> None:
    bulk_insert(cache_dir, ((cache_key("openai", "chat", chat(f"old {i}"), upstream=standin.url),
                             Entry("openai", "chat", MODEL, time.time(), body=b'{"x":"'
                                   + b"y" * 500 + b'"}')) for i in range(400)))


def test_a_file_with_corrupt_pages_is_moved_aside_once(standin, make_bridge, tmp_path):
    import subprocess
    import sys

    from bridge.serve.processes import ROOT

    _filled(tmp_path, standin)
    _corrupt_pages(tmp_path / FILE_NAME)
    stats = subprocess.run([sys.executable, "-m", "bridge", "cache", "stats", "--cache-dir",
                            str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert stats.returncode == 1 and stats.stderr.count("\n") == 1, stats.stderr
    assert "Traceback" not in stats.stderr and "moved aside" in stats.stderr
    _filled(tmp_path, standin)
    _corrupt_pages(tmp_path / FILE_NAME)
    bridge = make_bridge(*enable(tmp_path))
    body = chat(f"healed {uuid.uuid4().hex[:6]}")
    assert post(bridge, body).headers["x-cache"] == "MISS"
    seen = {post(bridge, body, headers={"Connection": "close"}).headers["x-cache"]
            for _ in range(12)}
    assert seen <= {"HIT-MEMORY", "HIT-DISK"}  # either worker: a hit (from the fresh file)
    assert standin.count(CHAT) == 1
    log = bridge.log()
    assert log.count("moved aside") == 1 and "disk tier unavailable" not in log
    aside = [path for path in tmp_path.glob(f"{FILE_NAME}.corrupt-*")
             if not path.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 2  # once by the command, once by the bridge


def test_cache_stats_reports_the_configured_ttl(standin, make_bridge, tmp_path):
    import subprocess
    import sys

    from bridge.serve.processes import ROOT

    _filled(tmp_path, standin)

    def ttl(*args: str, env: dict | None = None) -> float:
        done = subprocess.run([sys.executable, "-m", "bridge", "cache", "stats", "--json",
                               "--cache-dir", str(tmp_path), *args], cwd=ROOT, timeout=60,
                              capture_output=True, text=True, env={**os.environ, **(env or {})})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["ttl_seconds"]

    assert ttl() == 30
    assert ttl("--cache-ttl", "120000") == 120
    assert ttl(env={"BRIDGE_CACHE_TTL": "90000"}) == 90


# --- 5. flights, the upstream in the key, admission slots --------------------------------


def test_followers_say_hit_flight_and_count_as_hits(standin, make_bridge, tmp_path):
    bridge = make_bridge(*enable(tmp_path), workers=1)
    show_upstream_is_open(bridge)
    standin.configure(first_token_delay=0.5)
    body = chat(f"flight {uuid.uuid4().hex[:6]}")
    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(lambda _i: post(bridge, body).headers["x-cache"], range(4)))
    assert statuses == ["HIT-FLIGHT"] * 3 + ["MISS"]
    metrics = requests.get(bridge.url + "/metrics", timeout=10).text
    assert 'bridge_cache_hits_total{tier="flight"} 3.0' in metrics
    assert standin.count(CHAT) == 2


def test_another_upstream_does_not_serve_stored_answers(standin, make_bridge, tmp_path):
    body = chat(f"moved {uuid.uuid4().hex[:6]}")
    first = make_bridge(*enable(tmp_path))
    assert post(first, body).headers["x-cache"] == "MISS"
    first.stop()
    moved = make_bridge(*enable(tmp_path), upstream=standin.url.replace("127.0.0.1", "localhost"))
    show_upstream_is_open(moved)
    assert post(moved, body).headers["x-cache"] == "MISS"
    assert standin.count(CHAT) == 3


def test_the_admission_slot_lives_as_long_as_the_upstream_call(standin, make_bridge, tmp_path):
    bridge = make_bridge(*enable(tmp_path, "--max-concurrency", "1", "--max-queue", "0"),
                         workers=1)
    show_upstream_is_open(bridge)
    standin.configure(token_delay=0.1)
    body = chat(f"slot {uuid.uuid4().hex[:6]}", stream=True)
    follower_done = threading.Event()

    def follow() -> None:
        with post(bridge, body, stream=True) as response:
            assert response.headers["x-cache"] == "HIT-FLIGHT"
            for _line in response.iter_lines():
                pass
        follower_done.set()

    with post(bridge, body, stream=True) as leader:
        next(line for line in leader.iter_lines() if line)
        thread = threading.Thread(target=follow)
        thread.start()
        wait_for(lambda: standin.count(CHAT) == 2 and time.sleep(0.3) is None, 5)
    # the leader's client left; the follower still reads, the upstream still generates
    assert not follower_done.is_set()
    other = post(bridge, chat(f"other {uuid.uuid4().hex[:6]}"))
    assert other.status_code == 503  # the one slot is still the running call's
    thread.join(30)
    assert follower_done.is_set()
    assert wait_for(lambda: post(bridge, chat(f"later {uuid.uuid4().hex[:6]}")).status_code
                    == 200, 5)
