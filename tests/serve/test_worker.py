"""The gevent worker's heartbeat: a worker that stops answering, even before it served
anything (frozen in its stages' start), is killed by gunicorn's master after its timeout
and replaced."""

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
