"""The console's request log and usage panel in a real headless Chromium, against real
gunicorn bridges with 2 gevent workers: what the page lists after misses, hits and
refusals through the bridge (key names, models, statuses, cache results), merged from
both workers; prompts and answers nowhere (`/status`, the run directory, the page)
unless `--request-log-bodies`, and then with credentials masked.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest
import requests
from helpers import keys_command, wait_for
from test_console_page import open_console, wait_for_page

from bridge.core import instance
from bridge.serve.processes import Process, start_bridge

CHAT = "/v1/chat/completions"
UPSTREAM_KEY = "sk-upstream-" + uuid.uuid4().hex
ROWS = """[...document.querySelectorAll('#requests tr')].map(
    (tr) => [...tr.children].map((td) => td.textContent))"""
COLUMNS = ("time", "key", "api", "model", "status", "tokens", "cache", "latency", "upstream",
           "request_id")


def create_key(state_dir: Path, name: str, *flags: str) -> str:
    done = keys_command(state_dir, "create", name, *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def shared(standin_server, tmp_path_factory) -> Iterator[tuple[Process, Path, dict[str, str]]]:
    """A shared-mode bridge with a cache and two client keys (bob may use qwen3 only)."""
    home = tmp_path_factory.mktemp("request-log")
    state, key_file = home / "state", home / "upstream.key"
    key_file.write_text(UPSTREAM_KEY + "\n")
    keys = {"alice": create_key(state, "alice"),
            "bob": create_key(state, "bob", "--models", "qwen3")}
    with start_bridge("--enable-shared-mode", "--api-key-file", str(key_file),
                      "--state-dir", str(state), "--enable-cache",
                      "--cache-dir", str(home / "cache"), upstream=standin_server.url,
                      workers=2, log_dir=home) as process:
        yield process, state, keys


def chat(url: str, key: str, question: str, model: str = "llama3.2", stream: bool = False,
         request_id: str | None = None) -> requests.Response:
    headers = {"authorization": f"Bearer {key}"}
    if request_id:
        headers["x-request-id"] = request_id
    return requests.post(url + CHAT, headers=headers, timeout=30, json={
        "model": model, "stream": stream, "messages": [{"role": "user", "content": question}]})


def logged(url: str) -> list[dict]:
    return requests.get(url + "/status/requests", timeout=10).json()["requests"]


def page_rows(page) -> dict[str, dict[str, str]]:
    """The request log's rows on the page, by request id."""
    return {cells[-1]: dict(zip(COLUMNS, cells, strict=True))
            for cells in page.evaluate(ROWS) if len(cells) == len(COLUMNS)}


def run_directory(bridge: Process) -> Path:
    owners = instance.directory().parent.glob("deepseek-ollama-bridge-*/owner.pid")
    return next(owner.parent for owner in owners if owner.read_text() == str(bridge.pid))


def test_the_page_lists_misses_hits_and_refusals_with_keys_models_and_cache_results(
        shared, browser, standin):
    bridge, _, keys = shared
    problems: list[str] = []
    page = open_console(browser, bridge.url, problems)
    secret_word = "zanzibar" + uuid.uuid4().hex[:8]  # in a prompt, so in its answer too

    miss = chat(bridge.url, keys["alice"], f"tell me about {secret_word}")
    hit = chat(bridge.url, keys["alice"], f"tell me about {secret_word}")
    refused = chat(bridge.url, keys["bob"], "may I?", model="llama3.2")  # not bob's model
    stream = chat(bridge.url, keys["bob"], f"stream {secret_word}", model="qwen3", stream=True)
    assert (miss.status_code, hit.status_code, refused.status_code, stream.status_code) == (
        200, 200, 403, 200)
    assert miss.headers["x-cache"] == "MISS" and hit.headers["x-cache"].startswith("HIT")
    ids = [answer.headers["x-request-id"] for answer in (miss, hit, refused, stream)]

    wait_for_page(page, lambda p: set(ids) <= set(page_rows(p)), "the 4 requests")
    rows = page_rows(page)
    shown = [(rows[i]["key"], rows[i]["model"], rows[i]["status"], rows[i]["cache"])
             for i in ids]
    assert shown == [("alice", "llama3.2", "200", "MISS"),
                     ("alice", "llama3.2", "200", hit.headers["x-cache"]),
                     ("bob", "llama3.2", "403", "–"),
                     ("bob", "qwen3", "200", "MISS")]
    assert rows[ids[0]]["api"] == "openai" and rows[ids[0]]["tokens"] != "–"
    assert rows[ids[1]]["tokens"] == rows[ids[0]]["tokens"]  # the hit's, as served
    # newest first
    order = [cells[-1] for cells in page.evaluate(ROWS)]
    assert [order.index(i) for i in ids] == sorted((order.index(i) for i in ids), reverse=True)

    page.fill("#filter-key", "bob")
    wait_for_page(page, lambda p: set(page_rows(p)) >= set(ids[2:])
                  and not set(page_rows(p)) & set(ids[:2]), "bob's requests only")
    page.select_option("#filter-status", "4")
    wait_for_page(page, lambda p: set(page_rows(p)) == {ids[2]}, "bob's 403 only")
    page.fill("#filter-key", "")
    page.select_option("#filter-status", "")

    # prompts and answers are not kept by default: nowhere to be found
    assert secret_word not in requests.get(bridge.url + "/status", timeout=10).text
    assert secret_word not in requests.get(bridge.url + "/status/requests", timeout=10).text
    for path in run_directory(bridge).rglob("*"):
        if path.is_file():
            assert secret_word.encode() not in path.read_bytes(), path
    assert secret_word not in page.inner_text("body")
    log = requests.get(bridge.url + "/status/requests", timeout=10).text
    assert keys["alice"] not in log and UPSTREAM_KEY not in log
    assert problems == []


def test_requests_on_both_workers_are_merged_newest_first(shared, browser):
    bridge, _, keys = shared
    tag = uuid.uuid4().hex[:8]
    sent: list[str] = []

    def one(index: int) -> str:  # a new connection each time: the workers take turns
        request_id = f"{tag}-{index}"
        assert chat(bridge.url, keys["alice"], f"merge {tag} {index}",
                    request_id=request_id).status_code == 200
        return request_id

    def ours() -> list[dict]:
        return [entry for entry in logged(bridge.url) if entry["request_id"].startswith(tag)]

    def workers() -> set[int]:
        return {entry["worker"] for entry in ours()}

    def all_logged(wanted: set[str]) -> bool:  # each worker flushes within 0.5 s
        return {entry["request_id"] for entry in ours()} >= wanted

    with ThreadPoolExecutor(4) as pool:
        while len(sent) < 80 and len(workers()) < 2:
            sent += pool.map(one, range(len(sent), len(sent) + 8))
            wait_for(partial(all_logged, set(sent)), what="the requests in the log")
    assert len(workers()) == 2, "the requests reached one worker only"
    entries = logged(bridge.url)
    times = [entry["time"] for entry in entries]
    assert times == sorted(times, reverse=True)

    problems: list[str] = []
    page = open_console(browser, bridge.url, problems)
    wait_for_page(page, lambda p: set(sent) <= set(page_rows(p)), "both workers' requests")
    assert {page_rows(page)[i]["key"] for i in sent} == {"alice"}
    assert problems == []


@pytest.fixture(scope="module")
def with_bodies(standin_server, tmp_path_factory) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("request-log-bodies")
    # a state directory of its own: the usage ledger there starts empty
    with start_bridge("--request-log-bodies", "--request-log-size", "50", "--state-dir",
                      str(home / "state"), upstream=standin_server.url, workers=1,
                      log_dir=home) as process:
        yield process


def test_with_request_log_bodies_prompts_and_answers_are_kept_credentials_masked(
        with_bodies, browser, standin):
    problems: list[str] = []
    page = open_console(browser, with_bodies.url, problems)
    # no ledger rows before any request: the panel says so
    assert "no usage figures yet" in page.inner_text("#usage")
    word = "kilimanjaro" + uuid.uuid4().hex[:8]
    credential = "sk-" + uuid.uuid4().hex
    answer = requests.post(with_bodies.url + "/api/chat", timeout=30, json={
        "model": "llama3.2", "messages": [{"role": "user", "content": f"{word} {credential}"}]})
    assert answer.status_code == 200
    request_id = answer.headers["x-request-id"]

    entry = wait_for(lambda: next((e for e in logged(with_bodies.url)
                                   if e["request_id"] == request_id), None),
                     what="the request in the log")
    assert word in entry["prompt"] and word in entry["answer"]  # the stand-in echoes it
    assert entry["cache"] is None and entry["api"] == "ollama"
    text = requests.get(with_bodies.url + "/status/requests", timeout=10).text
    assert credential not in text and credential[3:] not in text

    wait_for_page(page, lambda p: request_id in page_rows(p), "the request")
    bodies = page.inner_text("#requests")
    assert "prompt: " in bodies and word in bodies and credential not in bodies
    assert "--request-log-bodies" in page.inner_text("#requests-shown")
    assert problems == []


def test_request_log_size_0_keeps_no_request(make_bridge, browser):
    off = make_bridge("--request-log-size", "0", workers=1)
    answer = requests.post(off.url + CHAT, timeout=30, json={
        "model": "llama3.2", "messages": [{"role": "user", "content": "not logged"}]})
    assert answer.status_code == 200
    bad = requests.post(off.url + CHAT, data=b"{", timeout=30)  # still in the last errors
    assert bad.status_code == 400
    wait_for(lambda: requests.get(off.url + "/status", timeout=10).json()["errors"],
             what="the 400 in the last errors")
    assert requests.get(off.url + "/status/requests", timeout=10).json() == {
        "size": 0, "bodies": False, "requests": []}
    assert not list((run_directory(off) / "console").glob("requests-*"))
    problems: list[str] = []
    page = open_console(browser, off.url, problems)
    wait_for_page(page, lambda p: "request log off" in p.inner_text("#requests"),
                  "that the log is off")
    assert problems == []


def test_the_usage_panel_shows_tokens_against_the_budget_and_top_models(
        shared, browser, standin):
    bridge, state, _ = shared
    team = create_key(state, "team-a", "--budget-tokens", "1000", "--budget-period", "day")
    answers = [chat(bridge.url, team, f"usage {n} {uuid.uuid4().hex}", model=model)
               for n, model in enumerate(("llama3.2", "llama3.2", "qwen3"))]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    used = sum(answer.json()["usage"]["total_tokens"] for answer in answers)

    def team_usage() -> dict | None:
        usage = requests.get(bridge.url + "/status", timeout=10).json().get("usage") or []
        return next((row for row in usage if row["key"] == "team-a"
                     and row["used_tokens"] == used), None)

    wait_for(team_usage, what="team-a's usage in /status")
    problems: list[str] = []
    page = open_console(browser, bridge.url, problems)
    row = '#usage tr[data-key="team-a"]'
    wait_for_page(page, lambda p: p.query_selector(row) is not None
                  and f"{used} / 1000 per day" in p.inner_text(row), "team-a's tokens")
    width = page.evaluate(f"document.querySelector('{row} .bar i').style.width")
    assert float(width.rstrip("%")) == pytest.approx(100 * used / 1000, abs=0.05)
    assert "llama3.2" in page.inner_text(row) and "qwen3" in page.inner_text(row)
    assert problems == []
