"""Dot segments in request paths (`bridge.web.paths`): a path that climbs out of `/v1/` or
`/api/` (`..` sent raw or percent-encoded) is a 404 in its API's error shape and never
reaches the upstream, in pass-through and in shared mode; one that stays inside is served
at its normal form. The requests go out on raw sockets: `requests` would resolve the dot
segments itself before sending."""

from __future__ import annotations

import json
from typing import Iterator

import pytest

from bridge.ollama_standin import StandIn
from bridge.serve.processes import Process, start_bridge
from bridge.web.paths import normal_form
from tests.helpers import raw_http

UPSTREAM_KEY = "sk-bridge-own-upstream-key-0123456789"

ESCAPES = [
    ("GET", "/v1/../admin/secret"),
    ("GET", "/v1/%2e%2e/admin/secret"),
    ("GET", "/v1/%2E%2E/admin/secret"),
    ("GET", "/v1/..%2fadmin/secret"),
    ("GET", "/v1/.%2e/.%2E/admin"),
    ("GET", "/v1/models/../../health"),
    ("GET", "/v1//../admin"),
    ("POST", "/v1/../_standin/config"),
    ("POST", "/api/../_standin/config"),
    ("GET", "/api/%2e%2e/api/../admin"),
    ("DELETE", "/api/.."),
]


def send(url: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    request = (f"{method} {path} HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return raw_http(url, request.encode() + body)


@pytest.fixture(scope="module", params=["pass-through", "shared mode"])
def bridge(request, standin_server: StandIn, tmp_path_factory) -> Iterator[Process]:
    """A bridge in pass-through mode, then one in shared mode with its own upstream key
    and no client keys (it serves anyone on loopback, with that key)."""
    home = tmp_path_factory.mktemp("paths")
    shared = request.param == "shared mode"
    flags = ("--enable-shared-mode", "--state-dir", str(home / "state")) if shared else ()
    with start_bridge("--disable-think-filter", *flags, upstream=standin_server.url,
                      workers=1, env={"BRIDGE_API_KEY": UPSTREAM_KEY} if shared else None,
                      log_dir=home) as process:
        yield process


@pytest.mark.parametrize(("method", "path"), ESCAPES)
def test_a_path_that_climbs_out_of_the_apis_is_a_404_and_never_reaches_the_upstream(
        bridge, standin: StandIn, method: str, path: str) -> None:
    think_before = standin.config.think
    status, body = send(bridge.url, method, path, b'{"think": "tags"}')
    assert status == 404
    error = json.loads(body)["error"]
    if path.startswith("/api/"):  # Ollama's shape on /api, OpenAI's elsewhere
        assert isinstance(error, str) and "dot segments" in error
    else:
        assert set(error) == {"message", "type", "param", "code"}
        assert "dot segments" in error["message"]
    assert standin.count() == 0 and standin.requests == []
    assert standin.config.think == think_before  # the control endpoint was not reached


@pytest.mark.parametrize("path", ["/v1/models", "/v1/./models", "/v1/x/../models",
                                  "/api/../v1/%2e/models"])
def test_a_path_inside_the_api_is_served_at_its_normal_form(bridge, standin: StandIn,
                                                            path: str) -> None:
    status, body = send(bridge.url, "GET", path)
    assert status == 200
    assert "qwen3:latest" in {model["id"] for model in json.loads(body)["data"]}
    assert [r.path for r in standin.requests] == ["/v1/models"]


def test_normal_form() -> None:
    assert normal_form("/v1/../admin") == "/admin"
    assert normal_form("/v1//../admin") == "/admin"  # the stricter of the two readings
    assert normal_form("/../../v1/models") == "/v1/models"
    assert normal_form("/v1/models/.") == "/v1/models/"
    assert normal_form("/v1/..") == "/"
