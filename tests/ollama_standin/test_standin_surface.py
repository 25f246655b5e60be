"""The rest of today's Ollama surface on the stand-in (section 8 of
shared/reference/ollama-wire-format.md): capabilities and context lengths in listings,
each endpoint's texts for empty and unknown model names, 500 before a stream's first
byte, and /api/pull with its progress stream, through bytes and the `ollama` client."""

from __future__ import annotations

import ollama
import pytest
import requests
from standin_bytes import HELLO, chat, masked

from bridge.ollama_standin import Fault


def test_tags_entries_carry_capabilities_and_lengths(standin):
    standin.configure(models=["llama3.2:latest", "qwen3:latest"])
    r = requests.get(standin.url + "/api/tags")
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    llama, qwen = r.content.split(b'},{"name"')
    assert llama.endswith(
        b'"details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],'
        b'"parameter_size":"3.2B","quantization_level":"Q4_K_M","context_length":131072,'
        b'"embedding_length":3072},"capabilities":["completion","tools"]')
    assert qwen.endswith(b'"context_length":40960,"embedding_length":4096},'
                         b'"capabilities":["completion","tools","thinking"]}]}')


def test_ps_entries_carry_the_loaded_context_length(standin):
    standin.configure(models=["all-minilm:latest"])
    entry = requests.get(standin.url + "/api/ps").content
    assert entry.endswith(b'"quantization_level":"F16"},"expires_at":"2099-01-01T00:00:00Z",'
                          b'"size_vram":45960996,"context_length":512}]}')


def test_show_details_have_no_lengths_but_capabilities(standin):
    body = requests.post(standin.url + "/api/show", json={"model": "qwen3"}).json()
    assert "context_length" not in body["details"]
    assert body["capabilities"] == ["completion", "tools", "thinking"]
    assert body["model_info"]["qwen3.context_length"] == 40960


NATIVE = "application/json; charset=utf-8"
REQUIRED = (400, "model is required")
NO_NAME = (404, "model '' not found")
NOT_FOUND = (404, "model 'foo' not found")
NOT_PULLED = (404, 'model \\"foo\\" not found, try pulling it first')


@pytest.mark.parametrize(("path", "name", "want"), [
    ("/api/chat", "", REQUIRED), ("/api/chat", "foo", NOT_FOUND),
    ("/api/generate", "", NO_NAME), ("/api/generate", "foo", NOT_FOUND),
    ("/api/embed", "", NO_NAME), ("/api/embed", "foo", NOT_PULLED),
    ("/api/embeddings", "", REQUIRED), ("/api/embeddings", "foo", NOT_PULLED),
    ("/api/show", "", REQUIRED), ("/api/show", "foo", (404, "model 'foo:latest' not found")),
    ("/api/show", "me/foo:7b", (404, "model 'me/foo:7b' not found")),
    ("/v1/chat/completions", "", REQUIRED), ("/v1/chat/completions", "foo", NOT_FOUND),
    ("/v1/completions", "", NO_NAME), ("/v1/completions", "foo", NOT_FOUND),
    ("/v1/embeddings", "", NO_NAME), ("/v1/embeddings", "foo", NOT_PULLED),
])
def test_model_name_errors_per_endpoint(standin, path, name, want):
    r = requests.post(standin.url + path, json={"model": name, "messages": HELLO,
                                                "prompt": "hi", "input": "hi"})
    status, message = want
    if path.startswith("/api/"):
        body, content_type = b'{"error":"%s"}' % message.encode(), NATIVE
    else:
        kind = "invalid_request_error" if status == 400 else "not_found_error"
        body = (b'{"error":{"message":"%s","type":"%s","param":null,"code":null}}\n'
                % (message.encode(), kind.encode()))
        content_type = "application/json"
    assert (r.status_code, r.headers["Content-Type"], r.content) == (
        status, content_type, body)


@pytest.mark.parametrize(("path", "content_type", "body"), [
    ("/api/chat", "application/json", b'{"error":"out of memory"}'),
    ("/api/generate", "application/json", b'{"error":"out of memory"}'),
    ("/v1/chat/completions", "application/json",
     b'{"error":{"message":"out of memory","type":"api_error","param":null,"code":null}}\n'),
    ("/v1/completions", "application/json",
     b'{"error":{"message":"out of memory","type":"api_error","param":null,"code":null}}\n'),
])
def test_a_stream_failing_before_its_first_byte_is_a_500(standin, path, content_type, body):
    standin.push_fault(Fault("inband", after_chunks=0, body="out of memory"))
    r = requests.post(standin.url + path, json={"model": "llama3.2", "messages": HELLO,
                                                "prompt": "hi", "stream": True})
    assert (r.status_code, r.headers["Content-Type"], r.content) == (500, content_type, body)


def test_pull_progress_stream(standin):
    r = requests.post(standin.url + "/api/pull", json={"model": "qwen3-coder:30b"})
    assert (r.status_code, r.headers["Content-Type"]) == (200, "application/x-ndjson")
    lines = r.content.split(b"\n")
    assert lines[-1] == b"" and lines[0] == b'{"status":"pulling manifest"}'
    assert lines[-4:-1] == [b'{"status":"verifying sha256 digest"}',
                            b'{"status":"writing manifest"}', b'{"status":"success"}']
    layer = lines[1:4]
    digest = layer[0].split(b'"digest":"')[1][:71]
    assert digest.startswith(b"sha256:") and len(digest) == 71
    head = b'{"status":"pulling %s","digest":"%s","total":18556688734' % (digest[7:19], digest)
    assert layer == [head + b"}", head + b',"completed":9278344367}',
                     head + b',"completed":18556688734}']
    assert len(lines) == 1 + 5 * 3 + 3 + 1  # five layers, three reports each
    assert "qwen3-coder:30b" in [m["name"] for m in requests.get(
        standin.url + "/api/tags").json()["models"]]


def test_pull_whole_and_failures(standin):
    def pull(body):
        r = requests.post(standin.url + "/api/pull", json=body)
        return r.status_code, r.headers["Content-Type"], r.content

    assert pull({"model": "qwen2.5:14b", "stream": False}) == (
        200, "application/json", b'{"status":"success"}')
    assert pull({"name": "nope", "stream": False}) == (
        500, "application/json", b'{"error":"pull model manifest: file does not exist"}')
    assert pull({"model": "nope"}) == (200, "application/x-ndjson", (
        b'{"status":"pulling manifest"}\n'
        b'{"error":"pull model manifest: file does not exist"}\n'))
    assert pull({"model": ""}) == (400, NATIVE, b'{"error":"invalid model name"}')


def test_pull_with_the_ollama_client(standin):
    client = ollama.Client(host=standin.url)
    assert client.pull("qwq").status == "success"
    statuses = [p.status for p in client.pull("gpt-oss:120b", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert {m.model for m in client.list().models} >= {"qwq:latest", "gpt-oss:120b"}
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        client.pull("nope")


def test_pull_any_name_in_the_any_catalogue(standin):
    standin.configure(catalogue="any")
    assert ollama.Client(host=standin.url).pull("someone/anything:1b").status == "success"


def test_a_plain_request_gets_the_same_bytes_as_before(standin):
    assert masked(chat(standin, {"model": "llama3.2", "messages": HELLO}).content) == (
        b'{"id":"chatcmpl-N","object":"chat.completion","created":0,"model":"llama3.2",'
        b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":'
        b'"assistant","content":"Echo: hello world"},"finish_reason":"stop"}],"usage":'
        b'{"prompt_tokens":6,"completion_tokens":3,"total_tokens":9}}\n')
