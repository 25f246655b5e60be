"""Async jobs sent on the client APIs served by translation (`/v1/messages`,
`/v1/responses`), end to end: real gunicorn bridges (2 gevent workers, pass-through
mode) with the SQLite job store and with the Redis one, the official `anthropic` and
`openai` clients (and `requests` where the 202 is to be seen). A job is accepted with a
202, then answered (sent again, or at the status URL) as that API answers it: a whole
body or that API's event stream, think tags stripped; one upstream call per job; a
conflict in that API's error shape; another principal's job does not exist."""

from __future__ import annotations

import json
import uuid
from typing import Iterator

import anthropic
import openai
import pytest
import requests
from test_async_jobs import new_fingerprint, until_done
from test_job_owners import STORES, redis_url  # noqa: F401 - `redis_url`: a fixture

from bridge.ollama_standin import StandIn
from bridge.ollama_standin.wire import answer_text
from bridge.serve.processes import Process, start_bridge

CLAUDE, QWEN = "deepseek-r1:7b", "qwen3"
KEY, OTHER_KEY = "sk-ant-one", "sk-ant-two"
TAGS = {"x-standin-think": "tags"}  # the stand-in writes <think>…</think> into the text
SLOW = {"x-standin-token-delay": "0.05"}  # still running when the 202 is answered


def question() -> str:
    return f"Why is the sky blue? ({uuid.uuid4().hex[:8]})"


def message_request(q: str, fingerprint: str, **extra: object) -> dict:
    return {"model": CLAUDE, "max_tokens": 400, "messages": [{"role": "user", "content": q}],
            "request_fingerprint": fingerprint, **extra}


def sse(response: requests.Response) -> list[tuple[str, dict]]:
    """(event name, data) of each event of an SSE answer (comments skipped)."""
    events = []
    for block in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n")
                     if line and not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.fixture(scope="module", params=STORES)
def bridge(request: pytest.FixtureRequest, standin_server: StandIn,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("translated-async")
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    shared = ("--redis-timeout", "1000", "--redis-prefix", f"apis-{uuid.uuid4().hex[:8]}",
              "--redis-url", url) if url else ()
    with start_bridge("--enable-async-request", "--enable-cache", "--cache-dir",
                      str(home / "cache"), "--state-dir", str(home / "state"), *shared,
                      upstream=standin_server.url, workers=2, log_dir=home) as process:
        yield process


def submit(url: str, body: dict, headers: dict) -> requests.Response:
    """Send `body` as a job: its 202, checked to say where the job stands."""
    accepted = requests.post(url, json=body, headers={**headers, **SLOW}, timeout=10)
    assert accepted.status_code == 202, accepted.text
    fingerprint = body["request_fingerprint"]
    assert accepted.json()["fingerprint"] == fingerprint
    assert accepted.json()["status"] in ("queued", "running")
    assert accepted.headers["location"] == f"/v1/async/{fingerprint}"
    assert accepted.headers["retry-after"]
    return accepted


def test_a_messages_job_answers_as_the_messages_api(bridge, standin):
    q, fingerprint = question(), new_fingerprint()
    body = message_request(q, fingerprint)
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", **TAGS}
    submit(bridge.url + "/v1/messages", body, headers)
    status_url = f"{bridge.url}/v1/async/{fingerprint}"
    done = until_done(status_url, headers=headers, fingerprint=fingerprint)
    assert done.status_code == 200, done.text
    message = done.json()
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert message["content"] == [{"type": "text", "text": answer_text(q, 1)}]  # no tags
    assert message["stop_reason"] == "end_turn" and message["usage"]["output_tokens"] > 0
    # sent again, with the official client: the job's result, not another call upstream
    client = anthropic.Anthropic(base_url=bridge.url, api_key=KEY, max_retries=0)
    again = client.messages.create(**{k: v for k, v in body.items()
                                      if k != "request_fingerprint"},
                                   extra_body={"request_fingerprint": fingerprint})
    assert again.content[0].text == answer_text(q, 1) and again.id != message["id"]
    assert standin.count("/api/chat") == 1
    with pytest.raises(anthropic.ConflictError) as conflict:  # another request, same name
        client.messages.create(model=CLAUDE, max_tokens=400,
                               messages=[{"role": "user", "content": q + "?"}],
                               extra_body={"request_fingerprint": fingerprint})
    assert conflict.value.body["type"] == "error"
    assert conflict.value.body["error"]["type"] == "invalid_request_error"
    assert fingerprint in conflict.value.body["error"]["message"]
    elsewhere = requests.get(status_url, headers={**headers, "x-api-key": OTHER_KEY},
                             timeout=10)
    assert elsewhere.status_code == 404 and fingerprint in elsewhere.text
    assert standin.count("/api/chat") == 1


def test_a_streamed_messages_job_answers_with_anthropics_events(bridge, standin):
    q, fingerprint = question(), new_fingerprint()
    body = message_request(q, fingerprint, stream=True)
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", **TAGS}
    submit(bridge.url + "/v1/messages", body, headers)
    done = until_done(f"{bridge.url}/v1/async/{fingerprint}", headers=headers,
                      fingerprint=fingerprint)
    assert done.headers["content-type"].startswith("text/event-stream")
    events = sse(done)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "".join(data["delta"]["text"] for name, data in events
                   if name == "content_block_delta") == answer_text(q, 1)
    client = anthropic.Anthropic(base_url=bridge.url, api_key=KEY, max_retries=0)
    with client.messages.stream(**{k: v for k, v in body.items()
                                   if k not in ("request_fingerprint", "stream")},
                                extra_body={"request_fingerprint": fingerprint}) as stream:
        assert stream.get_final_text() == answer_text(q, 1)
    assert standin.count("/api/chat") == 1


def test_a_responses_job_answers_as_the_responses_api(bridge, standin):
    q, fingerprint = question(), new_fingerprint()
    want = openai.OpenAI(base_url=standin.url + "/v1", api_key="x", max_retries=0) \
        .responses.create(model=QWEN, input=q).output_text
    standin.reset()
    body = {"model": QWEN, "input": q, "request_fingerprint": fingerprint}
    headers = {"authorization": f"Bearer {KEY}"}
    submit(bridge.url + "/v1/responses", body, headers)
    done = until_done(f"{bridge.url}/v1/async/{fingerprint}", headers=headers,
                      fingerprint=fingerprint)
    answer = done.json()
    assert answer["object"] == "response" and answer["status"] == "completed"
    assert answer["id"].startswith("resp_") and answer["output"][-1]["type"] == "message"
    assert answer["output"][-1]["content"][0]["text"] == want
    client = openai.OpenAI(base_url=bridge.url + "/v1", api_key=KEY, max_retries=0)
    again = client.responses.create(model=QWEN, input=q,
                                    extra_body={"request_fingerprint": fingerprint})
    assert again.output_text == want
    with pytest.raises(openai.ConflictError) as conflict:
        client.responses.create(model=QWEN, input=q + "?",
                                extra_body={"request_fingerprint": fingerprint})
    assert conflict.value.body["code"] == "request_fingerprint_conflict"
    other = openai.OpenAI(base_url=bridge.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.get(f"/async/{fingerprint}", cast_to=object)
    assert standin.count("/api/chat") == 1


def test_a_streamed_responses_job_answers_with_its_events(bridge, standin):
    q, fingerprint = question(), new_fingerprint()
    body = {"model": QWEN, "input": q, "stream": True, "request_fingerprint": fingerprint}
    headers = {"authorization": f"Bearer {KEY}"}
    submit(bridge.url + "/v1/responses", body, headers)
    done = until_done(f"{bridge.url}/v1/async/{fingerprint}", headers=headers,
                      fingerprint=fingerprint)
    events = sse(done)
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
    text = "".join(data["delta"] for name, data in events
                   if name == "response.output_text.delta")
    assert text and text == events[-1][1]["response"]["output"][-1]["content"][0]["text"]
    client = openai.OpenAI(base_url=bridge.url + "/v1", api_key=KEY, max_retries=0)
    replayed = list(client.responses.create(model=QWEN, input=q, stream=True,
                                            extra_body={"request_fingerprint": fingerprint}))
    assert replayed[-1].type == "response.completed"
    assert replayed[-1].response.output_text == text
    assert standin.count("/api/chat") == 1


def test_a_messages_job_for_a_model_that_cannot_think_answers_without_thinking(bridge,
                                                                              standin):
    q, fingerprint = question(), new_fingerprint()
    body = {**message_request(q, fingerprint), "model": "qwen2.5",
            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    submit(bridge.url + "/v1/messages", body, headers)
    done = until_done(f"{bridge.url}/v1/async/{fingerprint}", headers=headers,
                      fingerprint=fingerprint)
    assert done.status_code == 200, done.text
    assert done.json()["content"] == [{"type": "text", "text": answer_text(q, 1)}]
    sent = [request.json() for request in standin.requests if request.path == "/api/chat"]
    assert [request.get("think") for request in sent] in ([True, None], [None])
    assert sent[-1]["messages"][-1]["content"] == q
    # the credentials went with the relaxed request too (pass-through: the client's own)
    assert all(request.headers.get("x-api-key") == KEY for request in standin.requests
               if request.path == "/api/chat")


def test_a_responses_job_continues_an_earlier_response(bridge, standin):
    client = openai.OpenAI(base_url=bridge.url + "/v1", api_key=KEY, max_retries=0)
    first = client.responses.create(model=QWEN, input=question())
    q, fingerprint = question(), new_fingerprint()
    body = {"model": QWEN, "input": q, "previous_response_id": first.id,
            "request_fingerprint": fingerprint}
    headers = {"authorization": f"Bearer {KEY}"}
    submit(bridge.url + "/v1/responses", body, headers)
    done = until_done(f"{bridge.url}/v1/async/{fingerprint}", headers=headers,
                      fingerprint=fingerprint)
    assert done.status_code == 200, done.text
    native = [request.json() for request in standin.requests if request.path == "/api/chat"]
    # the job ran with the earlier turn put back: its question, its answer, then this one
    assert [message["role"] for message in native[-1]["messages"]] == [
        "user", "assistant", "user"]
    assert native[-1]["messages"][1]["content"] == first.output_text
    assert done.json()["output"][-1]["content"][0]["text"] == answer_text(q, 3)
