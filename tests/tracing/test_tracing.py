"""OpenTelemetry traces, end to end: real gunicorn bridges export to a test OTLP/HTTP
collector (decoded with `opentelemetry-proto`), in front of the Ollama stand-in."""

from __future__ import annotations

import secrets
from typing import Iterator

import ollama
import openai
import pytest
import requests
from otlp_receiver import Receiver

from bridge.ollama_standin import Fault, StandIn
from bridge.serve.processes import Process, start_bridge
from tests.helpers import keys_command, wait_for

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "20"}  # ms: batches leave at once in tests
PLUGIN = """
function HandleServerRequest(request) return true, request end
function HandleServerResponse(response) return response end
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    collector = Receiver().start()
    yield collector
    collector.stop()


@pytest.fixture(scope="module")
def traced(standin_server: StandIn, receiver: Receiver,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A bridge with traces, the cache and a Lua plugin, routing to one named upstream."""
    directory = tmp_path_factory.mktemp("traced")
    (directory / "plugin.lua").write_text(PLUGIN)
    (directory / "upstreams.toml").write_text(
        f'[[upstream]]\nname = "gpu-a"\nurl = "{standin_server.url}"\nmodels = ["*"]\n')
    with start_bridge("--otlp-endpoint", receiver.url, "--enable-cache",
                      "--cache-dir", str(directory / "cache"), "--enable-luajit",
                      "--luajit-script", str(directory / "plugin.lua"),
                      "--upstreams", str(directory / "upstreams.toml"),
                      "-a", "1", "-i", "50", "-m", "50",
                      upstream=None, workers=1, env=FAST_EXPORT, log_dir=directory) as process:
        yield process


def traceparent() -> tuple[str, str, str]:
    """A caller's `traceparent`, with its trace id and span id."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def upstream_headers(standin: StandIn) -> dict[str, str]:
    calls = [r for r in standin.requests if r.path in ("/api/chat", "/v1/chat/completions")]
    assert calls, "the upstream got no model call"
    return {name.lower(): value for name, value in calls[-1].headers.items()}


def spans_of(receiver: Receiver, request_id: str, children: int):
    """The server span of a request and its children, once `children` have arrived."""
    def arrived():
        span = receiver.server_span(request_id)
        if span is None:
            return None
        kids = receiver.children(span)
        return (span, kids) if len(kids) >= children else None
    return wait_for(arrived, what=f"the spans of request {request_id}")


def test_a_chat_span_continues_the_callers_trace_with_genai_attributes_and_children(
        traced, receiver, standin):
    header, trace_id, caller_span = traceparent()
    client = openai.OpenAI(base_url=traced.url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3", messages=[{"role": "user", "content": "trace me"}],
        extra_headers={"traceparent": header, "tracestate": "vendor=1"})
    answer = raw.parse()
    request_id = raw.headers["x-request-id"]

    server, children = spans_of(receiver, request_id, children=4)
    assert server.name == "chat qwen3" and server.kind == "server"
    assert (server.trace_id, server.parent_id) == (trace_id, caller_span)
    attributes = server.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.system"] == "ollama"
    assert attributes["gen_ai.request.model"] == "qwen3"
    assert attributes["gen_ai.response.model"] == answer.model
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens > 0
    assert attributes["http.response.status_code"] == 200
    assert attributes["bridge.cache.result"] == "MISS"
    assert attributes["bridge.upstream.name"] == "gpu-a"
    assert not server.failed
    assert server.resource["service.name"] == "deepseek-ollama-bridge"

    by_name = {span.name: span for span in children}
    assert by_name["cache lookup"].attributes["bridge.cache.result"] == "MISS"
    assert {"lua HandleServerRequest", "lua HandleServerResponse"} <= set(by_name)
    call = by_name["upstream gpu-a"]
    assert call.kind == "client"
    assert call.attributes["bridge.upstream.name"] == "gpu-a"
    assert call.attributes["url.full"] == standin.url + "/v1/chat/completions"
    assert call.attributes["http.response.status_code"] == 200

    # the upstream got the trace, with the upstream call's span as its parent
    sent = upstream_headers(standin)
    assert sent["traceparent"] == f"00-{trace_id}-{call.span_id}-01"
    assert sent["tracestate"] == "vendor=1"


def test_a_cache_hit_is_traced_with_its_tier_and_the_usage_it_served(traced, receiver, standin):
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "twice"}]}
    first = requests.post(traced.url + "/v1/chat/completions", json=body, timeout=30)
    again = requests.post(traced.url + "/v1/chat/completions", json=body, timeout=30)
    assert again.headers["x-cache"].startswith("HIT")
    server, children = spans_of(receiver, again.headers["x-request-id"], children=3)
    assert server.attributes["bridge.cache.result"] == "HIT-MEMORY"
    usage = first.json()["usage"]
    assert server.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert server.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    lookup = next(span for span in children if span.name == "cache lookup")
    assert lookup.attributes["bridge.cache.tier"] == "memory"
    assert not any(span.name.startswith("upstream") for span in children)


def test_a_streams_span_ends_with_the_stream_and_its_output_tokens(traced, receiver, standin):
    client = ollama.Client(host=traced.url)
    parts = list(client.chat(model="qwen3", stream=True,
                             messages=[{"role": "user", "content": "stream a trace"}]))
    final = parts[-1]
    assert final.done and final.eval_count > 0
    request_ids = {r.headers.get("x-request-id") or r.headers.get("X-Request-Id")
                   for r in standin.requests if r.path == "/api/chat"}
    (request_id,) = request_ids
    server, _ = spans_of(receiver, request_id, children=1)
    assert server.name == "chat qwen3"
    assert server.attributes["gen_ai.usage.output_tokens"] == final.eval_count
    assert server.attributes["gen_ai.usage.input_tokens"] == final.prompt_eval_count
    assert server.attributes["bridge.stream.outcome"] == "complete"


def test_each_upstream_attempt_has_its_span_and_sends_its_own_traceparent(
        traced, receiver, standin):
    standin.push_fault(Fault("status", status=503, body="busy"))
    answer = requests.post(traced.url + "/api/chat", timeout=30, json={
        "model": "qwen3", "stream": False, "messages": [{"role": "user", "content": "retry"}]})
    assert answer.status_code == 200
    server, children = spans_of(receiver, answer.headers["x-request-id"], children=5)
    calls = sorted((span for span in children if span.name == "upstream gpu-a"),
                   key=lambda span: span.attributes["bridge.upstream.attempt"])
    assert [(call.failed, call.attributes["http.response.status_code"]) for call in calls] \
        == [(True, 503), (False, 200)]
    sent = [r.headers["traceparent"].split("-")[1:3] for r in standin.requests
            if r.path == "/api/chat"]
    assert sent == [[server.trace_id, call.span_id] for call in calls]
    assert server.attributes["bridge.upstream.attempts"] == 2 and not server.failed


def test_an_upstream_failure_marks_the_spans_in_error(traced, receiver, standin):
    for _ in range(2):  # the attempt and its retry
        standin.push_fault(Fault("status", status=500, body="upstream broke"))
    answer = requests.post(traced.url + "/api/chat", timeout=30, json={
        "model": "qwen3", "stream": False, "messages": [{"role": "user", "content": "fail"}]})
    assert answer.status_code >= 500
    server, children = spans_of(receiver, answer.headers["x-request-id"], children=1)
    assert server.failed and server.attributes["http.response.status_code"] == answer.status_code
    assert next(span for span in children if span.name == "upstream gpu-a").failed


def test_the_standard_environment_variables_turn_traces_on_and_exit_flushes_them(
        make_bridge, receiver, standin, tmp_path):
    state, key_file = tmp_path / "state", tmp_path / "upstream.key"
    key_file.write_text(UPSTREAM_KEY)
    created = keys_command(state, "create", "team-x")
    assert created.returncode == 0, created.stderr
    client_key = created.stdout.strip()
    # shared mode; batches every 10 minutes: what arrives was sent when the worker exited
    bridge = make_bridge("--enable-shared-mode", "--state-dir", str(state),
                         "--api-key-file", str(key_file), workers=1, env={
                             "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                             "OTEL_SERVICE_NAME": "bridge-eu",
                             "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
                             "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=abc",
                             "OTEL_BSP_SCHEDULE_DELAY": "600000"})
    answer = requests.post(bridge.url + "/v1/embeddings", timeout=30,
                           headers={"authorization": f"Bearer {client_key}"},
                           json={"model": "all-minilm", "input": "embed me"})
    assert answer.status_code == 200
    assert "traceparent" in last_upstream_headers(standin)
    bridge.stop()
    server = receiver.server_span(answer.headers["x-request-id"])
    assert server is not None, "the worker exited without exporting its spans"
    assert server.name == "embeddings all-minilm"
    assert server.attributes["gen_ai.operation.name"] == "embeddings"
    assert server.attributes["gen_ai.system"] == "ollama"
    assert server.attributes["bridge.client_key"] == "team-x"
    everything = repr([(span.attributes, span.resource) for span in receiver.trace(
        server.trace_id)])
    assert client_key not in everything and UPSTREAM_KEY not in everything
    assert server.resource["service.name"] == "bridge-eu"
    assert server.resource["deployment.environment"] == "test"
    assert any(post.get("x-collector-token") == "abc" for post in receiver.posts)


def test_tracing_off_sends_no_span_and_no_traceparent_upstream(make_bridge, receiver, standin):
    # the collector's address is in the environment, but the SDK is disabled
    plain = make_bridge(workers=1, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                        "OTEL_SDK_DISABLED": "true"})
    answer = requests.post(plain.url + "/api/chat", timeout=30, json={
        "model": "qwen3", "stream": False, "messages": [{"role": "user", "content": "quiet"}]})
    assert answer.status_code == 200
    assert "traceparent" not in last_upstream_headers(standin)
    plain.stop()  # a traced worker exports what it has when it exits (test above)
    assert receiver.server_span(answer.headers["x-request-id"]) is None


def last_upstream_headers(standin: StandIn) -> dict[str, str]:
    return {name.lower(): value for name, value in standin.requests[-1].headers.items()}
