"""Access lines (text and JSON), `-d` tracing, and no credential in any log line, metric
or error body."""

from __future__ import annotations

import json
import re
import time
from typing import Callable

import pytest
import requests

from bridge.core.exchange import usage_in
from bridge.core.redaction import REDACTED
from bridge.ollama_standin import Fault
from bridge.serve.processes import start_bridge

SECRET = "sk-live-SECRET0123456789abcdef"
CREDENTIALS = {"authorization": f"Bearer {SECRET}", "x-api-key": "key-SECRET-42"}


def chat(text: str, **extra: object) -> dict:
    return {"model": "qwen2.5", "messages": [{"role": "user", "content": text}], **extra}


def log_lines(process, until: Callable[[list[dict]], bool], timeout: float = 5.0) -> list[dict]:
    """The lines of a bridge's JSON log, once `until` holds for them: access lines are
    written as the responses close."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]
        if until(lines):
            return lines
        assert time.monotonic() < deadline, "the expected log lines were not written"
        time.sleep(0.05)


def text_access_line(process, request_id: str, timeout: float = 5.0) -> str:
    """The access line of one request in a text log, once it is written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in process.log().splitlines() if f"id={request_id}" in line]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        time.sleep(0.05)


def access_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["logger"] == "bridge.access"]


@pytest.fixture(scope="module")
def traced(standin_server, tmp_path_factory):
    with start_bridge("-d", "--log-format", "json", "-r", "3", upstream=standin_server.url,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


def test_no_credential_reaches_a_log_line_a_metric_or_an_error_body(traced, standin):
    standin.push_fault(Fault("status", status=500, body="upstream broke"))
    sends = [
        ("POST", "/v1/chat/completions", chat("fails upstream")),
        ("POST", "/v1/chat/completions", chat("fine", api_key="body-SECRET-7")),
        ("POST", "/v1/chat/completions", chat("streamed", stream=True)),
        ("POST", "/api/chat", chat("native")),
        ("POST", "/v1/chat/completions", b"{not json"),
        ("GET", "/v1/chat/completions", None),
        ("GET", "/nowhere", None),
    ] + [("POST", "/v1/chat/completions", chat(f"burst {n}")) for n in range(6)]
    bodies = []
    for method, path, body in sends:
        answer = requests.request(method, traced.url + path, headers=CREDENTIALS, timeout=30,
                                  **({"data": body} if isinstance(body, bytes) else {"json": body}))
        bodies.append(answer.text)
        if answer.status_code >= 400:
            assert "SECRET" not in answer.text and "SECRET" not in str(answer.headers)
    assert any('"rate_limit_exceeded"' in body for body in bodies)
    upstream_headers = {k.lower(): v for k, v in standin.requests[0].headers.items()}
    assert upstream_headers["authorization"] == f"Bearer {SECRET}"  # passed on, not logged

    lines = log_lines(traced, lambda lines: len(access_lines(lines)) >= len(sends))
    assert "SECRET" not in traced.log()
    assert "SECRET" not in requests.get(traced.url + "/metrics", timeout=10).text
    traces = [line["message"] for line in lines if line["logger"] == "bridge.trace"]
    assert any(REDACTED in message and "fine" in message for message in traces)


def test_json_access_lines_carry_what_operators_need(traced, standin):
    time.sleep(1.1)  # a token for us
    requests.post(traced.url + "/v1/chat/completions", json=chat("who am I"),
                  headers={"x-request-id": "json-line-1"}, timeout=30)
    lines = log_lines(traced, lambda lines: any(line.get("request_id") == "json-line-1"
                                                for line in lines))
    line = next(line for line in lines if line.get("request_id") == "json-line-1")
    assert line["logger"] == "bridge.access" and line["level"] == "info"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/chat/completions",
                                                              200)
    assert line["upstream_attempts"] == 1 and line["duration_ms"] > 0
    assert {"cache", "client_key", "outcome", "time", "pid"} <= line.keys()


def test_json_mode_writes_only_json_lines_gunicorns_own_too(traced):
    lines = [line for line in traced.log().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert any(line["logger"] == "gunicorn.error" for line in parsed)  # "Booting worker"
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in parsed)


def test_text_access_line_per_request(bridge, standin):
    standin.configure(token_delay=0.05)
    with requests.post(bridge.url + "/v1/chat/completions", json=chat("stream me", stream=True),
                       headers={"x-request-id": "text-line-1"}, timeout=30) as answer:
        assert answer.status_code == 200
        answer.content  # noqa: B018 - the whole stream
    line = text_access_line(bridge, "text-line-1")
    assert '"POST /v1/chat/completions" 200' in line
    assert "attempts=1" in line and "outcome=complete" in line
    duration_ms = float(line.split('" 200 ')[1].split("ms")[0])
    assert duration_ms >= 50  # the whole stream, not the first byte


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_operations_answers_carry_their_request_id_in_the_answer_and_the_access_line(
        bridge, path):
    """/health and /ready are answered outside the pipeline: the id is theirs all the
    same, the client's when it sent one, else a new one."""
    sent = "ops-" + path.strip("/")
    given = requests.get(bridge.url + path, headers={"x-request-id": sent}, timeout=10)
    assert given.status_code == 200 and given.headers["x-request-id"] == sent
    assert f'"GET {path}" 200' in text_access_line(bridge, sent)
    made = requests.get(bridge.url + path, timeout=10).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert f'"GET {path}" 200' in text_access_line(bridge, made)


def test_a_client_that_leaves_mid_stream_is_logged_so(bridge, standin):
    standin.configure(token_delay=0.5)
    with requests.post(bridge.url + "/v1/chat/completions", json=chat("long", stream=True),
                       headers={"x-request-id": "left-early-1"}, stream=True,
                       timeout=30) as answer:
        next(answer.iter_lines())
    line = text_access_line(bridge, "left-early-1")
    assert "outcome=client_left" in line


def test_usage_is_read_from_both_api_shapes():
    assert usage_in(b'{"usage":{"prompt_tokens":5,"completion_tokens":2,'
                    b'"prompt_tokens_details":{"cached_tokens":9}}}') == (5, 2)
    assert usage_in(b'{"done":true,"prompt_eval_count":7,"eval_count":3}') == (7, 3)
    assert usage_in(b'{"content":"say \\"prompt_tokens\\": 99"}') is None
    assert usage_in(b'{"choices":[]}') is None
