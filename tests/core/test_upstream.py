"""The upstream client through a real bridge: retries with back-off (`-a/-i/-m`),
`Retry-After`, the `-t` budget, and gateway errors (502/504) in each surface's shape."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from helpers import wait_for

from bridge.core.upstream import Backoff, parse_retry_after
from bridge.ollama_standin import Fault
from bridge.serve.processes import free_port, start_bridge

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
NATIVE = dict(CHAT, stream=False)


@pytest.fixture(scope="module")
def retrying(standin_server, tmp_path_factory):
    """Up to 3 retries, 50 ms first wait, waits capped at 1.5 s."""
    with start_bridge("-a", "3", "-i", "50", "-m", "1500", "-t", "5000",
                      upstream=standin_server.url,
                      log_dir=tmp_path_factory.mktemp("retrying")) as process:
        yield process


@pytest.fixture(scope="module")
def impatient(standin_server, tmp_path_factory):
    """No retries, the shortest allowed timeout (1 s)."""
    with start_bridge("-t", "1000", upstream=standin_server.url,
                      log_dir=tmp_path_factory.mktemp("impatient")) as process:
        yield process


@pytest.fixture(scope="module")
def orphan(tmp_path_factory):
    """A bridge whose upstream is down (nothing listens on its port)."""
    with start_bridge("-a", "2", "-i", "50", "-m", "100", "-t", "2000",
                      upstream=f"http://127.0.0.1:{free_port()}",
                      log_dir=tmp_path_factory.mktemp("orphan")) as process:
        yield process


@pytest.mark.parametrize("fault", [Fault("status", status=503), Fault("status", status=500),
                                   Fault("reset"), Fault("refuse")],
                         ids=["503", "500", "reset", "refuse"])
def test_two_failures_then_success_is_a_200_after_three_calls(retrying, standin, fault):
    standin.push_fault(fault, times=2)
    response = requests.post(retrying.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    assert standin.count("/v1/chat/completions") == 3
    request_id = response.headers["x-request-id"]
    wait_for(lambda: retrying.log().count("retrying in") and
             retrying.log().count(f"[{request_id}]") >= 2, what="two retries logged")


def test_upstream_4xx_is_not_retried_and_passes_through(retrying, standin):
    standin.push_fault(Fault("status", status=400, body="bad thing"))
    response = requests.post(retrying.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "bad thing"
    assert standin.count() == 1


def test_retries_exhausted_passes_the_last_upstream_error_through(retrying, standin):
    standin.push_fault(Fault("status", status=503), times=4)
    response = requests.post(retrying.url + "/api/chat", json=NATIVE, timeout=30)
    assert response.status_code == 503 and "error" in response.json()
    assert standin.count() == 4


@pytest.mark.parametrize("retry_after, low, high", [(1, 1.0, 1.45), (5, 1.5, 3.0)],
                         ids=["respected", "capped-by-m"])
def test_429_retry_after_is_waited_for_up_to_the_max_interval(retrying, standin, retry_after,
                                                              low, high):
    standin.push_fault(Fault("status", status=429, retry_after=retry_after))
    response = requests.post(retrying.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 200
    first, second = standin.requests
    assert low - 0.02 <= second.time - first.time < high


def test_upstream_down_is_a_502_within_the_retry_budget(orphan):
    started = time.monotonic()
    response = requests.post(orphan.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable" and error["type"] == "api_error"
    assert time.monotonic() - started < 5  # 2 retries of at most 100 ms, plus refusals
    native = requests.post(orphan.url + "/api/chat", json=NATIVE, timeout=30)
    assert native.status_code == 502 and isinstance(native.json()["error"], str)
    assert "Traceback" not in response.text + native.text


def test_slow_upstream_past_the_timeout_is_a_504(impatient, standin):
    standin.push_fault(Fault("slow_headers", delay=3))
    started = time.monotonic()
    response = requests.post(impatient.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert 0.9 <= time.monotonic() - started < 2.5


def test_stream_outliving_the_timeout_ends_with_an_error_event_and_a_log_line(impatient,
                                                                             standin):
    body = dict(CHAT, model="qwen3", stream=True)  # a thinking model: many chunks
    response = requests.post(impatient.url + "/v1/chat/completions", json=body, timeout=30,
                             headers={"x-standin-token-delay": "0.1"})
    assert response.status_code == 200  # the headers had gone out before the timeout
    events = [line for line in response.text.split("\n\n") if line]
    assert "data: [DONE]" not in events
    assert '"code":"upstream_timeout"' in events[-1]
    assert len(events) >= 2  # what came within the budget was relayed
    request_id = response.headers["x-request-id"]
    wait_for(lambda: "upstream stream cut (timeout)" in impatient.log()
             and request_id in impatient.log(), what="the timeout to be logged")


def test_ollama_stream_outliving_the_timeout_ends_with_an_error_line(impatient, standin):
    body = dict(CHAT, model="qwen3")  # native streams by default
    response = requests.post(impatient.url + "/api/chat", json=body, timeout=30,
                             headers={"x-standin-token-delay": "0.1"})
    last = response.text.splitlines()[-1]
    assert '"error"' in last and '"done":true' not in response.text


def test_backoff_grows_exponentially_within_its_bounds():
    backoff = Backoff(0.1, 1.0)
    for retry in range(1, 8):
        ceiling = min(1.0, 0.1 * 2 ** (retry - 1))
        for _ in range(20):
            assert max(0.1, ceiling / 2) <= backoff.delay(retry) <= ceiling
    assert backoff.delay(1, retry_after=0.5) == 0.5
    assert backoff.delay(1, retry_after=30) == 1.0


def test_retry_after_in_seconds_or_as_an_http_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_a_minute = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= parse_retry_after(in_a_minute) <= 61


@pytest.fixture
def black_hole():
    """A loopback address that never accepts a connection: a listener with a full backlog
    that nobody accepts from (further connection attempts wait, as with a host that drops
    packets)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(8):  # fill the backlog; later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    time.sleep(0.2)
    yield f"http://{address[0]}:{address[1]}"
    for sock in [*fillers, listener]:
        sock.close()


def test_a_host_that_never_accepts_fails_at_the_connect_timeout_not_at_t(make_bridge,
                                                                          black_hole):
    bridge = make_bridge("-t", "60000", "--connect-timeout", "300", upstream=black_hole,
                         workers=1)
    started = time.monotonic()
    response = requests.post(bridge.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout" and "--connect-timeout" in error["message"]
    assert time.monotonic() - started < 10  # not the minute of -t


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", CHAT), ("/api/chat", NATIVE)])
def test_a_whole_answer_cut_by_the_upstream_says_so(impatient, standin, path, body):
    standin.push_fault(Fault("cut"))
    response = requests.post(impatient.url + path, json=body, timeout=30)
    assert response.status_code == 502
    error = response.json()["error"]
    message = error if isinstance(error, str) else error["message"]
    assert message == "upstream closed the response early"


def test_an_ollama_stream_with_its_own_error_line_gets_no_second_one(impatient, standin):
    standin.push_fault(Fault("inband", after_chunks=2))
    response = requests.post(impatient.url + "/api/chat", json=dict(CHAT, stream=True),
                             timeout=30)
    lines = [json.loads(line) for line in response.text.splitlines()]
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and lines[-1] is errors[0]
    assert errors[0]["error"] != "upstream stream ended prematurely"  # the upstream's own
    request_id = response.headers["x-request-id"]
    wait_for(lambda: f"outcome=truncated id={request_id}" in impatient.log(),
             what="the stream recorded as truncated")


def test_the_admission_slot_is_free_while_a_retry_waits(make_bridge, standin):
    """One upstream slot; a request that failed waits 1.5 s before its retry: another
    request reaches the upstream during that wait instead of after the retry."""
    bridge = make_bridge("--max-concurrency", "1", "-a", "1", "-i", "1500", "-m", "1500",
                         workers=1)
    standin.push_fault(Fault("status", status=503, path="/v1/chat/completions"))
    with ThreadPoolExecutor(2) as pool:
        retried = pool.submit(requests.post, bridge.url + "/v1/chat/completions", json=CHAT,
                              timeout=30)
        wait_for(lambda: standin.count() == 1, what="the first attempt")
        other = pool.submit(requests.post, bridge.url + "/api/chat", json=NATIVE, timeout=30)
        assert other.result().status_code == 200 and retried.result().status_code == 200
    order = [request.path for request in standin.requests]
    assert order == ["/v1/chat/completions", "/api/chat", "/v1/chat/completions"]


class _EchoingStream(BaseHTTPRequestHandler):
    """An OpenAI-style upstream whose streamed answer echoes the credential it was sent
    (some do, in errors and debug fields), JSON-escaped in one frame, as is in another,
    and a long answer between them."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the handler's name
        self.rfile.read(int(self.headers["content-length"]))
        key = self.headers.get("authorization", "")
        texts = [f"you sent {key}", *[f" word{i}" for i in range(30)], f" and {key}"]
        events = [{"choices": [{"index": 0, "delta": {"content": text},
                                "finish_reason": None}]} for text in texts]
        body = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
        body = (body + "data: [DONE]\n\n").encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_stream_echoing_the_clients_key_reaches_it_redacted_frame_by_frame(make_bridge):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingStream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bridge = make_bridge("--upstream-api", "openai",
                             upstream=f"http://127.0.0.1:{server.server_address[1]}")
        secret = "sk-client-echoed-0123456789"
        for _ in range(2):  # the second with what the first made once
            answer = requests.post(bridge.url + "/v1/chat/completions",
                                   json={**CHAT, "stream": True}, timeout=30,
                                   headers={"Authorization": f"Bearer {secret}"})
            assert answer.status_code == 200 and secret not in answer.text
            events = [line for line in answer.text.split("\n\n") if line]
            assert len(events) == 33 and events[-1] == "data: [DONE]"
            texts = [json.loads(event[6:])["choices"][0]["delta"]["content"]
                     for event in events[:-1]]
            assert texts[0] == "you sent Bearer [REDACTED]"
            assert texts[-1] == " and Bearer [REDACTED]"
            assert texts[1:-1] == [f" word{i}" for i in range(30)]
    finally:
        server.shutdown()
        server.server_close()
