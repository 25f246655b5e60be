"""The transport alone, against a socket that answers with raw bytes: bodies read as they
arrive (chunked or not) within a deadline, and the two ways a body read fails."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest

from bridge.core.transport import BodyCut, BodyTimeout, Transport


@pytest.fixture
def answer_with() -> Iterator:
    """Starts a one-shot server that reads a request and sends `reply`, then waits
    `hold` seconds before closing; yields its URL maker."""
    servers = []
    done = threading.Event()  # set at the end of the test: every held connection closes

    def start(reply: bytes, hold: float = 0.0) -> str:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        servers.append(listener)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)
                done.wait(hold)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/"

    yield start
    done.set()
    for listener in servers:
        listener.close()


def body_of(url: str, seconds: float = 2.0) -> bytes:
    transport = Transport(pool_size=1, connect_timeout=1.0)
    answer = transport.send("GET", url, {}, b"", timeout=seconds)
    try:
        return b"".join(transport.body(answer, time.monotonic() + seconds))
    finally:
        answer.close()


def test_a_chunked_body_comes_without_its_framing(answer_with):
    url = answer_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n")
    assert body_of(url) == b"hello world"


def test_a_body_shorter_than_its_content_length_is_cut(answer_with):
    url = answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    with pytest.raises(BodyCut):
        body_of(url)


def test_a_chunked_body_that_stops_inside_a_chunk_is_cut(answer_with):
    url = answer_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"a\r\nhalf")
    with pytest.raises(BodyCut):
        body_of(url)


def test_a_body_that_outlives_the_deadline_times_out(answer_with):
    # the server holds the connection open until the test ends: only the deadline can end
    # the read, and it is a timeout, not a cut
    url = answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", hold=600.0)
    with pytest.raises(BodyTimeout):
        body_of(url, seconds=0.3)
