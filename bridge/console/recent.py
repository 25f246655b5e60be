"""The last errors the bridge answered (status >= 400), across all workers.

Each worker keeps its own last `KEEP` errors and writes them, at most once per
`FLUSH_SECONDS`, to a small file of the instance's run directory; `/status` merges the
files of every worker. An error is its status, path, message and request id: never a
body or a header, and its message passes the log redaction (known secrets and
credential-shaped values masked) first.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Any

from bridge.core import events, instance
from bridge.core.redaction import Redactor

KEEP = 20
FLUSH_SECONDS = 0.5
_PREFIX = "errors-"


def directory() -> Path:
    path = instance.directory() / "console"
    path.mkdir(exist_ok=True)
    return path


class Recorder:
    """Feeds on `request.error` events; flushes this worker's last errors to its file."""

    def __init__(self, redactor: Redactor):
        self.redactor = redactor
        self.errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP)
        self.flush_due = False

    def __call__(self, name: str, value: float, labels: dict[str, str]) -> None:
        if name != "request.error":
            return
        self.errors.append({
            "time": round(time.time(), 3), "status": int(labels.get("status", "0") or 0),
            "path": self.redactor.log_text(labels.get("path", ""))[:200],
            "message": self.redactor.log_text(labels.get("message", "")),
            "request_id": self.redactor.log_text(labels.get("request_id", ""))[:100]})
        if not self.flush_due:  # a burst of errors costs one write, not one each
            self.flush_due = True
            import gevent  # the workers are gevent's; imported here so importing is free

            gevent.spawn_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self.flush_due = False
        path = directory() / f"{_PREFIX}{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(list(self.errors)))
        os.replace(temporary, path)  # a reader never sees half a file


_recorder: Recorder | None = None


def start(secrets: list[str]) -> None:
    """Start recording this process's errors (once per process)."""
    global _recorder
    if _recorder is None:
        _recorder = Recorder(Redactor(secrets))
        events.subscribe(_recorder)


def last() -> list[dict[str, Any]]:
    """The last `KEEP` errors of all workers, newest first."""
    found: list[dict[str, Any]] = []
    for path in directory().glob(f"{_PREFIX}*.json"):
        try:
            found.extend(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a worker's file replaced meanwhile: its errors show next time
    found.sort(key=lambda error: error.get("time", 0), reverse=True)
    return found[:KEEP]
