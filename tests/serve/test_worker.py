"""The gevent worker: its heartbeat (a worker that stops answering, even before it served
anything, frozen in its stages' start, is killed by gunicorn's master after its timeout
and replaced), and its writes (an answer larger than the socket's buffer arrives whole)."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import requests
from helpers import wait_for

from bridge.serve.processes import start_bridge


def test_a_worker_frozen_in_start_up_is_killed_after_the_timeout(standin, tmp_path: Path
                                                                 ) -> None:
    lock_path = tmp_path / "held.lock"
    failures: list[BaseException] = []

    def killed(log_dir: Path) -> bool:
        return any("WORKER TIMEOUT" in log.read_text(errors="replace")
                   for log in log_dir.glob("process-*.log"))

    def release_once_killed(held) -> None:
        try:  # bounded: a worker never killed makes the bridge's start fail below
            wait_for(lambda: killed(tmp_path), 60, "gunicorn to kill the frozen worker")
        except AssertionError as exc:
            failures.append(exc)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)  # the next worker starts

    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        releaser = threading.Thread(target=release_once_killed, args=(held,), daemon=True)
        releaser.start()
        with start_bridge(upstream=standin.url, via="gunicorn", app="tests.serve.frozen_app:app",
                          workers=1, log_dir=tmp_path,
                          env={"FROZEN_LOCK": str(lock_path),
                               "GUNICORN_CMD_ARGS": "--timeout 10"}) as process:
            releaser.join(60)
            assert not failures, failures
            assert requests.get(process.url + "/health", timeout=15).status_code == 200


def test_an_answer_larger_than_the_socket_buffer_arrives_whole(standin, tmp_path: Path
                                                               ) -> None:
    """The worker sends a response's headers and first bytes with one `send`: what the
    socket did not take goes after, and the client gets every byte, twice on one
    connection."""
    from tests.serve.large_app import LARGE

    with start_bridge(upstream=standin.url, via="gunicorn", app="tests.serve.large_app:app",
                      workers=1, log_dir=tmp_path) as process, requests.Session() as session:
        for _ in range(2):
            response = session.get(process.url + "/large", timeout=60)
            assert response.status_code == 200
            assert len(response.content) == len(LARGE) and response.content == LARGE
