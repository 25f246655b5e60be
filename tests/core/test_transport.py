"""The transport alone, against a socket that answers with raw bytes: bodies read as they
arrive (chunked or not) within a deadline, and the two ways a body read fails."""

from __future__ import annotations

import select
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


@pytest.fixture
def one_answer_per_connection() -> Iterator[tuple[str, list[bytes], threading.Semaphore]]:
    """A server that answers one request per connection with a keep-alive response, then
    closes the connection (as an upstream does when its idle timeout ends); yields its URL,
    the requests it got and a semaphore released at each close."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    got: list[bytes] = []
    closed = threading.Semaphore(0)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                got.append(head + b"\r\n\r\n" + body)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            closed.release()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1/chat/completions?x=1", got, closed
    listener.close()


def test_a_pooled_connection_the_upstream_closed_is_not_used_again(one_answer_per_connection):
    url, got, closed = one_answer_per_connection
    transport = Transport(pool_size=1, connect_timeout=1.0)
    for _ in range(3):
        answer = transport.send("post", url, {"content-type": "application/json"}, b"{}", 5.0)
        try:
            assert answer.status_code == 200
            assert b"".join(transport.body(answer, time.monotonic() + 5.0)) == b"ok"
        finally:
            answer.close()
        # the connection went back to the pool; once the upstream's close has reached it,
        # it is found closed before the next request, which gets a connection of its own
        assert closed.acquire(timeout=10)
        (pool,) = set(transport._pools.get()[1]._by_origin.values())
        idle = [conn for conn in pool.pool.queue if conn is not None]
        assert len(idle) == 1 and select.select([idle[0].sock], [], [], 10)[0]
    assert len(got) == 3
    # sent as requests sends a prepared request: the method upper-cased, the path and
    # query as given, a Content-Length, the headers given
    head = got[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /v1/chat/completions?x=1 http/1.1\r\n")
    assert b"\r\ncontent-length: 2" in head and b"\r\ncontent-type: application/json" in head
    assert got[0].endswith(b"\r\n\r\n{}")


HEADER_BLOCKS = [
    b"Server: nginx\r\nX-A:  b \r\nX-A: c\r\n\r\n",  # repeated, spaced, trailing space
    b"A:\r\nB:x\r\nC: x:y\r\nD:\tx \t\r\n\r\n",  # empty, unspaced, a colon inside, tabs
    b"A: \xe9t\xe9\r\nB: x\x00y\x0c\x1c\x85\r\n\r\n",  # Latin-1, control bytes
    b"A: x\nB: y\n\n",  # bare LF
    b"\r\n",  # none
    b"A: x\r\n folded\r\nB: y\r\n\r\n",  # a folded value: the email parser's
    b"Bad Name: x\r\nC: d\r\n\r\n",  # not a header name: the email parser's (a defect)
    b"NoColon\r\nC: d\r\n\r\n", b":x\r\n\r\n", b"From x\r\n\r\n",
    b"A: x\r\r\nB: y\r\n\r\n",  # a lone CR: a line break to the email parser
    b"A: x\r\nB: y",  # no blank line: the answer ended
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_an_answer_s_headers_read_as_the_email_parser_reads_them(block):
    """Every answer's headers are read by the transport's own parser (http.client's
    without the email parser for plain lines): the same message, whatever the block."""
    import email.parser
    import http.client
    import io

    from bridge.core import transport

    assert http.client.parse_headers is transport.parse_headers  # what http.client calls
    expected = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(
        block.decode("iso-8859-1"))
    found = transport.parse_headers(io.BytesIO(block))
    assert type(found) is http.client.HTTPMessage
    assert found.items() == expected.items() and str(found) == str(expected)
    assert found.get_payload() == expected.get_payload()
    assert [type(defect) for defect in found.defects] == [
        type(defect) for defect in expected.defects]


def test_an_answer_s_headers_reach_the_caller(answer_with):
    url = answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up:  a b \r\n"
                      b"X-Up: c\r\nX-Folded: one\r\n two\r\n\r\nok")
    transport = Transport(pool_size=1, connect_timeout=1.0)
    answer = transport.send("GET", url, {}, b"", timeout=2.0)
    try:
        assert answer.headers["x-up"] == "a b , c"  # repeated: joined, as requests does
        assert answer.headers["x-folded"] == "one two"  # unfolded, as urllib3 does
        assert b"".join(transport.body(answer, time.monotonic() + 2.0)) == b"ok"
    finally:
        answer.close()
