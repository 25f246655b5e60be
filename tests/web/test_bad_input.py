"""Bad input is a 4xx in the surface's error shape, never a 500 or a traceback: deeply
nested JSON, lone surrogates, NaN, malformed chunking, bodies sent too slowly or cut
short by a client that hangs up — with the cache on, where such input used to break it."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests
from helpers import http_request, raw_http, wait_for

from bridge.serve.processes import start_bridge

MODEL_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat",
               "/api/generate", "/api/embed"]
CHAT = {"model": "qwen2.5", "messages": [{"role": "user", "content": "hello"}]}
BODY_TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
def bridge(standin_server, tmp_path_factory):
    """This module's bridge: the cache on, a short body-read timeout, one worker (so the
    request that follows a bad one is served by the same worker)."""
    cache_dir = tmp_path_factory.mktemp("cache")
    with start_bridge("--enable-cache", "--cache-dir", str(cache_dir), "--body-read-timeout",
                      str(BODY_TIMEOUT_MS), upstream=standin_server.url, workers=1,
                      log_dir=tmp_path_factory.mktemp("bad-input")) as process:
        yield process


def error_message(path: str, body: bytes) -> str:
    """The error's message, checking the surface's error shape on the way."""
    error = json.loads(body)["error"]
    if path.startswith("/v1/"):
        assert error["type"] == "invalid_request_error" and set(error) == {
            "message", "type", "param", "code"}
        return error["message"]
    assert isinstance(error, str)
    return error


def assert_no_traceback(bridge) -> None:
    log = bridge.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


@pytest.mark.parametrize("path", MODEL_PATHS)
def test_deeply_nested_json_is_a_400(bridge, standin, path):
    for depth in (1000, 10_000, 100_000):
        for body in (b"[" * depth + b"]" * depth,
                     b'{"model":"qwen2.5","input":' + b"[" * depth + b"]" * depth + b"}"):
            response = requests.post(bridge.url + path, data=body, timeout=30)
            assert response.status_code == 400, (depth, response.text[:200])
            assert "nested too deeply" in error_message(path, response.content)
    # a real tool schema, a few levels deep, is fine
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {
        "type": "object", "properties": {"b": {"type": "array", "items": {"type": "string"}}}}}}}
    body = dict(CHAT, tools=[{"type": "function", "function": {"name": "f",
                                                               "parameters": schema}}])
    assert requests.post(bridge.url + "/v1/chat/completions", json=body,
                         timeout=30).status_code == 200
    assert_no_traceback(bridge)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
@pytest.mark.parametrize("body, where", [
    (b'{"model":"qwen2.5","messages":[{"role":"user","content":"\\ud800"}]}',
     "messages[0].content"),
    (b'{"model":"\\uDFFF","messages":[{"role":"user","content":"hello"}]}', "model"),
    (b'{"model":"qwen2.5","messages":[{"role":"user","content":"hello"}],"stream":"\\ud800"}',
     "stream"),
    (b'{"model":"qwen2.5","messages":[{"role":"user","content":"a\\ud83dz"}]}',
     "messages[0].content"),
    (b'{"model":"qwen2.5","messages":[],"options":{"\\udc00":1}}', "a key in options"),
    (b'{"model":"qwen2.5","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
     "messages[0].content"),
], ids=["content", "model", "stream", "unpaired-high", "key", "raw-bytes"])
def test_lone_surrogates_are_a_400_naming_the_field(bridge, standin, path, body, where):
    response = requests.post(bridge.url + path, data=body, timeout=10)
    assert response.status_code == 400
    message = error_message(path, response.content)
    assert "lone UTF-16 surrogate" in message and where in message
    assert standin.count() == 0
    # the conversation is not blocked: the same request, well-formed, is answered at once
    good = requests.post(bridge.url + path, json=dict(CHAT, stream=False), timeout=10)
    assert good.status_code == 200
    # a real pair (an emoji written as two escapes) is fine
    pair = (b'{"model":"qwen2.5","stream":false,'
            b'"messages":[{"role":"user","content":"\\ud83d\\ude00"}]}')
    assert requests.post(bridge.url + path, data=pair, timeout=10).status_code == 200
    assert_no_traceback(bridge)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(bridge, standin, constant):
    body = b'{"model":"qwen2.5","messages":[],"temperature":' + constant + b"}"
    response = requests.post(bridge.url + "/v1/chat/completions", data=body, timeout=10)
    assert response.status_code == 400
    assert "not valid JSON" in error_message("/v1/", response.content)
    assert standin.count() == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
@pytest.mark.parametrize("chunks", [b"zz\r\n{}\r\n0\r\n\r\n",
                                    b"2\r\n{}\r\n0\r\nTrailer: x\r\n\r\n",
                                    b"2\r\n{}XX0\r\n\r\n",
                                    b"2;bad ext\r\n{}\r\n0\r\n\r\n"],
                         ids=["size-zz", "trailer-line", "no-crlf", "bad-extension"])
def test_malformed_chunked_bodies_are_a_400_and_the_connection_is_closed(bridge, standin,
                                                                        path, chunks):
    started = time.monotonic()
    status, body = raw_http(bridge.url, http_request(path, chunks, chunked=True, close=False))
    assert status == 400
    assert "malformed chunked request body" in error_message(path, body)
    # closed by the bridge after its answer, not by the 5 s keep-alive timeout
    assert time.monotonic() - started < 4
    assert standin.count() == 0
    assert_no_traceback(bridge)


def test_a_well_formed_chunked_body_is_served(bridge, standin):
    body = json.dumps(dict(CHAT, stream=False)).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
    status, answer = raw_http(bridge.url, http_request("/api/chat", chunks + b"0\r\n\r\n",
                                                       chunked=True))
    assert status == 200 and json.loads(answer)["done"] is True


@pytest.mark.parametrize("request_bytes", [
    http_request("/v1/chat/completions", b'{"model":"qwen2.5",', close=False)[:-19]
    .replace(b"Content-Length: 19", b"Content-Length: 500"),
    http_request("/v1/chat/completions", b"1" + b"0" * 19 + b"\r\n{}", chunked=True,
                 close=False),
], ids=["slow-content-length", "chunk-size-of-20-hex-digits"])
def test_a_body_that_does_not_arrive_in_time_is_a_408(bridge, standin, request_bytes):
    started = time.monotonic()
    status, body = raw_http(bridge.url, request_bytes, timeout=10)
    waited = time.monotonic() - started
    assert status == 408
    assert "--body-read-timeout" in error_message("/v1/", body)
    assert BODY_TIMEOUT_MS / 1000 - 0.1 <= waited < 5  # cut at the timeout, then closed
    assert standin.count() == 0
    assert_no_traceback(bridge)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_hanging_up_mid_body_is_one_info_line(bridge, standin, chunked):
    host, port = bridge.url.removeprefix("http://").rsplit(":", 1)
    head = http_request("/api/chat", b"", close=False).replace(b"Content-Length: 0",
                                                               b"Content-Length: 400")
    if chunked:
        head = http_request("/api/chat", b"", chunked=True, close=False)
    before = bridge.log().count("client hung up while sending the request body")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + (b"190\r\n" if chunked else b"") + b'{"model": "qwen2.5", ')
        time.sleep(0.2)
    wait_for(lambda: bridge.log().count("client hung up while sending the request body")
             == before + 1, what="the INFO line")
    line = next(line for line in reversed(bridge.log().splitlines())
                if "client hung up" in line)
    assert " INFO " in line
    assert_no_traceback(bridge)
    assert standin.count() == 0
