"""Streams through the bridge: relayed chunk by chunk as the upstream produces them, a
client hanging up closes the upstream request, and a cut stream never looks complete."""

from __future__ import annotations

import json
import socket
import threading
import time

import ollama
import openai
import pytest
import requests
from helpers import wait_for

from bridge.ollama_standin import Fault

CHAT = {"model": "llama3.2", "stream": True,
        "messages": [{"role": "user", "content": "Tell me about the sea"}]}
SLOW = {"x-standin-token-delay": "0.25"}  # the stand-in waits this long between chunks


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_first_chunk_arrives_while_the_upstream_is_still_generating(relay, standin, path):
    started = time.monotonic()
    with requests.post(relay.url + path, json=CHAT, headers=SLOW, stream=True,
                       timeout=30) as response:
        chunks = response.iter_content(chunk_size=None)
        first = next(chunks)
        first_at = time.monotonic()
        upstream_busy = standin.in_flight
        rest = b"".join(chunks)
    ended = time.monotonic()
    assert first.strip() and rest.strip()
    assert upstream_busy == 1  # the upstream had not finished when the client saw a chunk
    # With several 0.25 s gaps after it, the first chunk came well before the end.
    assert ended - first_at >= 0.4, (first_at - started, ended - started)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_client_hanging_up_closes_the_upstream_request(relay, standin, path):
    host, port = relay.url.removeprefix("http://").split(":")
    body = json.dumps(CHAT).encode()
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(f"POST {path} HTTP/1.1\r\nHost: bridge\r\nContent-Type: "
                       f"application/json\r\nContent-Length: {len(body)}\r\n"
                       f"X-Standin-Token-Delay: 0.3\r\n\r\n".encode() + body)
        received = b""
        while b"assistant" not in received:  # the first chunk of the answer
            received += client.recv(65536)
        assert standin.in_flight == 1
    # The client is gone mid-stream: the bridge must hang up on the upstream too.
    wait_for(lambda: standin.closed_early == 1 and standin.in_flight == 0, timeout=10,
             what="the upstream request to be closed")
    assert standin.count(path) == 1


def test_openai_sdk_raises_on_a_cut_stream(relay, standin):
    standin.push_fault(Fault("cut", after_chunks=2))
    sdk = openai.OpenAI(base_url=relay.url + "/v1", api_key="sk-test", max_retries=0)
    stream = sdk.chat.completions.create(model="llama3.2", messages=CHAT["messages"],
                                         stream=True)
    received = []
    with pytest.raises(openai.APIError, match="ended prematurely"):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 2  # what came before the cut was relayed
    assert standin.count() == 1  # bytes had reached the client: never retried


def test_ollama_client_sees_an_error_on_a_cut_stream(relay, standin):
    standin.push_fault(Fault("cut", after_chunks=1))
    client = ollama.Client(host=relay.url)
    parts = []
    with pytest.raises(ollama.ResponseError, match="ended prematurely"):
        for part in client.chat(model="llama3.2", messages=CHAT["messages"], stream=True):
            parts.append(part)
    assert len(parts) == 1 and not parts[0].done


def test_stream_relays_upstream_error_line_and_done_unchanged(relay, standin):
    """NDJSON and SSE framing survive the relay byte for byte."""
    for path in ("/v1/chat/completions", "/api/generate"):
        body = dict(CHAT, prompt="hi") if path == "/api/generate" else CHAT
        via = requests.post(relay.url + path, json=body, timeout=30)
        direct = requests.post(standin.url + path, json=body, timeout=30)
        assert via.headers["content-type"] == direct.headers["content-type"]
        assert len(via.content.splitlines()) == len(direct.content.splitlines())
        assert via.content.endswith(b"data: [DONE]\n\n" if path.startswith("/v1") else b"}\n")


def _odd_upstream(pieces: list[bytes]) -> tuple[str, threading.Thread, socket.socket]:
    """A loopback upstream that answers one request with `pieces`, each its own write, a
    few milliseconds apart (so the bridge's reads split where the pieces do)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.recv(65536)  # the request: one write (headers with the body)
            for piece in pieces:
                conn.sendall(piece)
                time.sleep(0.005)
            time.sleep(0.2)  # the bridge reads the end before the connection closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread, listener


def test_a_chunked_stream_is_relayed_exactly_however_its_chunks_and_reads_fall(make_bridge):
    """Chunk framing as HTTP allows it (several events in one chunk, an event across
    chunks, chunk extensions, upper-case sizes, trailers), sent in pieces that cut
    through chunk-size lines, data and line ends: the client gets exactly the events."""
    events = [b'data: {"choices":[{"index":0,"delta":{"content":"%d"}}]}\n\n' % i
              for i in range(6)] + [b"data: [DONE]\n\n"]
    stream = b"".join(events)
    chunks = [stream[:40], stream[40:200], stream[200:201], stream[201:]]
    body = b"".join(b"%X;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
    wire = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\nX-Trailer: t\r\n\r\n")
    cuts = [60, 61, 64, 150, 260, 261, len(wire) - 9, len(wire) - 2]
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    url, thread, listener = _odd_upstream(pieces)
    with listener:
        bridge = make_bridge("--disable-think-filter", upstream=url, workers=1)
        reply = requests.post(bridge.url + "/v1/chat/completions", timeout=10, json={
            "model": "llama3.2", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})
        thread.join(5)
    assert reply.status_code == 200
    assert reply.content == stream
