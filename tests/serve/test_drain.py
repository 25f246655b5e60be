"""A stop as a load balancer and a Kubernetes endpoint controller see it: on SIGTERM or
SIGINT `/ready` turns 503 at once while new requests are still served for the drain
delay, then the bridge stops listening, the streams in progress finish, and it exits 0."""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import threading

import pytest
import requests
from helpers import wait_for

from bridge import __version__
from bridge.cache.disk import FILE_NAME, TABLE
from bridge.serve.processes import start_bridge

STREAMS = 20
DRAIN_DELAY_MS = 1000
TOKEN_DELAY = "1.0"  # each stream lasts ~5 s: well past the drain delay


def draining(url: str) -> dict | None:
    """`/ready`'s JSON if it answers 503 (a refused connection fails the test: too late)."""
    response = requests.get(url + "/ready", timeout=5)
    return response.json() if response.status_code == 503 else None


def refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):  # reset: caught as it closed
        return True
    return False


def read_stream(url: str, number: int, started: threading.Semaphore,
                bodies: list[bytes]) -> None:
    question = f"Tell me more ({number})"  # distinct: no stream follows another's flight
    response = requests.post(url + "/v1/chat/completions", stream=True, timeout=60,
                             headers={"x-standin-token-delay": TOKEN_DELAY},
                             json={"model": "llama3.2", "stream": True,
                                   "messages": [{"role": "user", "content": question}]})
    chunks = response.iter_content(chunk_size=None)
    body = next(chunks)
    started.release()
    bodies.append(body + b"".join(chunks))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_drains_then_finishes_every_stream_and_exits_0(standin, tmp_path, stop_signal):
    cache = tmp_path / "cache"
    process = start_bridge("--disable-think-filter", "--drain-delay", str(DRAIN_DELAY_MS),
                           "--enable-cache", "--cache-dir", str(cache),
                           upstream=standin.url, workers=2, graceful_stop=True,
                           log_dir=tmp_path)
    try:
        assert requests.get(process.url + "/ready", timeout=10).status_code == 200
        started = threading.Semaphore(0)
        bodies: list[bytes] = []
        threads = [threading.Thread(target=read_stream,
                                    args=(process.url, number, started, bodies))
                   for number in range(STREAMS)]
        for thread in threads:
            thread.start()
        for _ in range(STREAMS):  # every stream has its first chunk
            assert started.acquire(timeout=30)

        process.proc.send_signal(stop_signal)
        ready = wait_for(lambda: draining(process.url), timeout=DRAIN_DELAY_MS / 1000,
                         what="/ready to say 503 before the drain delay ends")
        assert ready == {"status": "draining", "version": __version__}
        # During the drain delay new requests are still served, on new connections.
        late = requests.post(process.url + "/api/chat", timeout=10,
                             json={"model": "llama3.2", "stream": False,
                                   "messages": [{"role": "user", "content": "hi"}]})
        assert late.status_code == 200 and late.json()["done"] is True
        assert late.headers["connection"] == "close"  # its next request goes elsewhere

        wait_for(lambda: refuses_connections(process.url), timeout=10,
                 what="the listener to close after the drain delay")
        assert sum(thread.is_alive() for thread in threads) > 0  # streams outlive the listener
        for thread in threads:
            thread.join(30)
        assert len(bodies) == STREAMS
        for body in bodies:
            assert body.rstrip().endswith(b"data: [DONE]")
        assert process.proc.wait(30) == 0
        assert "Traceback" not in process.log()
        # The streams were stored whole as they finished, and the file is sound.
        with contextlib.closing(sqlite3.connect(cache / FILE_NAME)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone() == (STREAMS + 1,)
    finally:
        process.stop()


def test_a_second_signal_stops_at_once(standin, tmp_path):
    process = start_bridge("--disable-think-filter", "--drain-delay", "60000",
                           upstream=standin.url, workers=1, graceful_stop=True,
                           log_dir=tmp_path)
    try:
        process.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: draining(process.url), what="/ready to say draining")
        process.proc.send_signal(signal.SIGTERM)  # an operator who does not want to wait
        assert process.proc.wait(15) == 0  # not the 60 s drain delay
    finally:
        process.stop()
