"""The Flask glue: what passes through to the upstream (bodies, query strings, end-to-end
headers, the request id) and what the bridge refuses itself (400, 413, 405)."""

from __future__ import annotations

import pytest
import requests

from bridge.core.upstream import NOT_FORWARDED_RESPONSE, forwardable
from bridge.serve.processes import start_bridge

LIMIT = 4096
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def bridge(standin_server, tmp_path_factory):
    """This module's bridge: a small body limit, debug logs (which trace request ids)."""
    with start_bridge("--max-body-size", str(LIMIT), "-d", upstream=standin_server.url,
                      log_dir=tmp_path_factory.mktemp("proxy")) as process:
        yield process


def test_query_string_body_and_end_to_end_headers_reach_the_upstream(bridge, standin):
    body = b'{"model": "llama3.2",  "messages": [{"role": "user", "content": "hi"}]}'
    response = requests.post(
        bridge.url + "/v1/chat/completions?api-version=2024-10&x=%20y", data=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-client",
                 "X-Custom": "kept", "User-Agent": "my-app/1.0",
                 # hop-by-hop: for this connection only
                 "Connection": "keep-alive, X-Hop-Named", "X-Hop-Named": "dropped",
                 "Keep-Alive": "timeout=5", "TE": "trailers",
                 "Proxy-Authorization": "Basic c2VjcmV0"}, timeout=30)
    assert response.status_code == 200
    (seen,) = standin.requests
    assert seen.query == "api-version=2024-10&x=%20y"
    assert seen.body == body  # byte for byte, not re-encoded
    headers = {name.lower(): value for name, value in seen.headers.items()}
    assert headers["authorization"] == "Bearer sk-client"
    assert headers["x-custom"] == "kept" and headers["user-agent"] == "my-app/1.0"
    assert headers["content-type"] == "application/json"
    for hop in ("x-hop-named", "keep-alive", "te", "proxy-authorization"):
        assert hop not in headers, hop
    assert headers.get("connection", "keep-alive").lower() == "keep-alive"


def test_get_query_string_reaches_the_upstream(bridge, standin):
    assert requests.get(bridge.url + "/v1/models?limit=2", timeout=10).status_code == 200
    assert standin.requests[0].query == "limit=2"


def test_response_headers_end_to_end_pass_hop_by_hop_do_not(bridge, standin):
    from bridge.ollama_standin import Fault

    standin.push_fault(Fault("status", status=429, retry_after=7))
    response = requests.post(bridge.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    upstream = {"connection": "close, x-hop", "x-hop": "1", "keep-alive": "timeout=5",
                "transfer-encoding": "chunked", "retry-after": "7", "x-end": "1",
                "content-length": "10"}
    assert forwardable(upstream, NOT_FORWARDED_RESPONSE) == {"retry-after": "7", "x-end": "1"}


def test_request_id_is_taken_sent_upstream_returned_and_logged(bridge, standin):
    response = requests.post(bridge.url + "/v1/chat/completions", json=CHAT, timeout=30,
                             headers={"X-Request-Id": "client-id-42"})
    assert response.headers["x-request-id"] == "client-id-42"
    assert standin.requests[0].headers["x-request-id"] == "client-id-42"
    assert "[client-id-42]" in bridge.log()


@pytest.mark.parametrize("given", [None, "has spaces and \u00e9", "x" * 300])
def test_request_id_is_generated_when_missing_or_unusable(bridge, standin, given):
    headers = {"X-Request-Id": given.encode("utf-8")} if given else {}
    response = requests.post(bridge.url + "/api/chat", json=dict(CHAT, stream=False),
                             headers=headers, timeout=30)
    generated = response.headers["x-request-id"]
    assert len(generated) == 32 and generated != given
    assert standin.requests[0].headers["x-request-id"] == generated


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                  "/api/chat", "/api/generate", "/api/embed"])
@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b"\xff\xfe{}"],
                         ids=["malformed", "empty", "not-an-object", "not-utf8"])
def test_bad_json_is_a_400_without_calling_the_upstream(bridge, standin, path, body):
    response = requests.post(bridge.url + path, data=body, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    if path.startswith("/v1/"):
        assert error["type"] == "invalid_request_error" and error["message"]
    else:
        assert isinstance(error, str) and error
    assert standin.count() == 0
    assert "Traceback" not in response.text


def test_body_over_the_limit_is_a_413(bridge, standin):
    big = dict(CHAT, messages=[{"role": "user", "content": "x" * LIMIT}])
    response = requests.post(bridge.url + "/v1/chat/completions", json=big, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    chunked = requests.post(bridge.url + "/api/chat", data=iter([b"{" + b" " * LIMIT, b"}"]),
                            timeout=10)
    assert chunked.status_code == 413 and isinstance(chunked.json()["error"], str)
    assert standin.count() == 0


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/v1/chat/completions", "POST"), ("DELETE", "/v1/models", "GET"),
    ("PUT", "/api/chat", "POST"), ("POST", "/api/tags", "GET")])
def test_wrong_method_on_a_known_path_is_a_405(bridge, standin, method, path, allowed):
    response = requests.request(method, bridge.url + path, timeout=10)
    assert response.status_code == 405
    assert allowed in response.headers["allow"]
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed" if path.startswith("/v1/") else error
    assert standin.count() == 0


def test_other_paths_are_forwarded_unchanged(bridge, standin):
    for method, path in [("GET", "/v1/models/llama3.2"), ("POST", "/v1/no/such/thing"),
                         ("GET", "/api/unknown")]:
        via = requests.request(method, bridge.url + path, timeout=10)
        direct = requests.request(method, standin.url + path, timeout=10)
        assert (via.status_code, via.content) == (direct.status_code, direct.content), path
    assert standin.count() == 6


def test_paths_outside_the_apis_are_a_404_in_the_error_shape(bridge, standin):
    response = requests.get(bridge.url + "/nowhere", timeout=10)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert standin.count() == 0


def test_percent_encoded_paths_are_forwarded_as_sent(bridge, standin):
    requests.get(bridge.url + "/v1/models/hf.co%2Fbartowski%2Fllama:Q4", timeout=10)
    requests.get(bridge.url + "/api/a%20b/%C3%A9", timeout=10)
    assert [(r.path, r.method) for r in standin.requests] == [
        ("/v1/models/hf.co%2Fbartowski%2Fllama:Q4", "GET"), ("/api/a%20b/%C3%A9", "GET")]
