"""The console in a real headless Chromium (Debian's, driven by Playwright; no browser is
downloaded): it loads without console errors, and after misses, hits, a stream and 429s
through the bridge its numbers change accordingly within 3 s, read from the page itself.

The run writes screenshots (light and dark) to the test's temporary directory, and to
$BRIDGE_SCREENSHOT_DIR when set: `BRIDGE_SCREENSHOT_DIR=docs pytest tests/console`
refreshes the README's picture.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from bridge.serve.processes import start_bridge

UPDATE_SECONDS = 3.0  # the bound: the page shows new traffic within 3 s
VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen

@pytest.fixture(scope="module")
def console_bridge(standin_server, tmp_path_factory) -> Iterator:
    home = tmp_path_factory.mktemp("console")
    with start_bridge("--enable-cache", "--cache-dir", str(home / "cache"), "--rate-limit", "2",
                      upstream=standin_server.url, workers=2, log_dir=home) as process:
        yield process


def open_console(browser, url: str, problems: list[str], scheme: str = "light"):
    page = browser.new_page(viewport=VIEWPORT, color_scheme=scheme)
    page.on("console", lambda message: message.type == "error" and problems.append(
        f"console: {message.text}"))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.goto(url + "/console")
    page.wait_for_function("document.getElementById('settings').children.length > 0",
                           timeout=10_000)
    return page


def figure(page, element_id: str) -> str:
    return page.inner_text(f"#{element_id}").strip()


def number(page, element_id: str) -> float:
    return float(figure(page, element_id))


def wait_for_page(page, check, what: str) -> None:
    """Poll the DOM until `check(page)` holds, at most UPDATE_SECONDS (plus a margin for
    a shared machine's scheduling)."""
    deadline = time.monotonic() + UPDATE_SECONDS + 1.0
    while not check(page):
        assert time.monotonic() < deadline, f"the page did not show {what} within 3 s"
        page.wait_for_timeout(100)


def chat(url: str, question: str, model: str = "llama3.2", stream: bool = False,
         surface: str = "openai") -> requests.Response:
    path = "/v1/chat/completions" if surface == "openai" else "/api/chat"
    body = {"model": model, "stream": stream,
            "messages": [{"role": "user", "content": question}]}
    return requests.post(url + path, json=body, timeout=30)


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    wanted = os.environ.get("BRIDGE_SCREENSHOT_DIR")
    if wanted:
        shutil.copy(shot, Path(wanted) / name)
    return shot


def test_the_page_shows_misses_hits_a_stream_and_429s_as_they_happen(
        console_bridge, browser, standin, tmp_path):
    url = console_bridge.url
    problems: list[str] = []
    page = open_console(browser, url, problems)
    assert figure(page, "req-openai") == "0" and figure(page, "misses") == "0"

    standin.configure(token_delay=0.005)
    tag = uuid.uuid4().hex[:6]
    plan = [("openai", "deepseek-r1:7b", False), ("openai", "qwen3", True),
            ("ollama", "llama3.2", False)]
    for surface, model, stream in plan:  # misses, spaced below the rate limit
        answer = chat(url, f"{model} {tag}", model, stream, surface)
        assert answer.status_code == 200 and answer.headers["x-cache"] == "MISS"
        time.sleep(0.6)
    # a request is counted once its response closed, a miss when it was looked up:
    # both are waited for
    wait_for_page(page, lambda p: (figure(p, "misses"), figure(p, "req-openai"),
                                   figure(p, "req-ollama")) == ("3", "2", "1"),
                  "3 misses, 2 + 1 requests")
    assert number(page, "think-blocks") >= 1  # deepseek-r1's reasoning was removed

    hits = [chat(url, f"{model} {tag}", model, stream, surface)
            for surface, model, stream in plan + plan[:1]]
    assert all(hit.headers["x-cache"].startswith("HIT") for hit in hits)
    wait_for_page(page, lambda p: number(p, "hits-memory") + number(p, "hits-disk") == 4
                  and (figure(p, "req-openai"), figure(p, "req-ollama")) == ("5", "2"),
                  "4 hits, 5 + 2 requests")
    assert figure(page, "hit-ratio") == "57.1 %"  # 4 hits of 7 lookups
    assert number(page, "tokens-saved") > 0 and figure(page, "gpu-saved") != "0 ms"
    assert "deepseek-r1:7b" in page.inner_text("#models-requests")

    burst = [chat(url, f"burst {n} {tag}") for n in range(6)]  # beyond 2 upstream calls/s
    refused = sum(answer.status_code == 429 for answer in burst)
    assert refused >= 1
    wait_for_page(page, lambda p: (figure(p, "rate-limited"), figure(p, "misses"),
                                   figure(p, "req-openai"), figure(p, "err-openai"))
                  == (str(refused), "9", "11", str(refused)),
                  f"{refused} rate-limited requests among 11")
    wait_for_page(page, lambda p: "429" in p.inner_text("#errors"), "the 429s in the errors")

    page.wait_for_timeout(2000)  # a few more chart points before the picture
    assert save_screenshot(page, tmp_path, "console.png").stat().st_size > 10_000
    assert problems == []


def test_dark_mode_and_a_reload_keep_the_history(console_bridge, browser, tmp_path):
    problems: list[str] = []
    page = open_console(browser, console_bridge.url, problems, scheme="dark")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(17, 20, 24)"  # the dark palette, not white
    # the history lives in the bridge: a fresh page draws the minutes already seen
    page.wait_for_function(
        "document.querySelector('#chart-rps polyline').getAttribute('points').split(' ')"
        ".length > 2", timeout=5_000)
    save_screenshot(page, tmp_path, "console-dark.png")
    assert problems == []
