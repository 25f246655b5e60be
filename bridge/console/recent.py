"""What the bridge answered last, across all workers: the last errors (status >= 400) and
the request log (the last `--request-log-size` requests to the client APIs).

Each worker keeps its own last items of each kind in a ring (`Ring`: a deque append of a
small tuple on the request path) and writes them, at most once per `FLUSH_SECONDS` and off
the request, to a small file of the instance's run directory; `/status` merges the files
of every worker, newest first. Text passes the log redaction (known secrets and
credential-shaped values masked) when it is written, not when it is recorded.

An error is its status, path, message and request id. A request is its time, client key
NAME (shared mode), client API, model, status, tokens, cache result, latency, request id
and upstream: never a header or a credential. Its prompt and answer (clipped) are kept
only with `--request-log-bodies`, which says so.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from bridge.core import events, instance
from bridge.core.redaction import Redactor
from bridge.core.settings import Settings, configured_secrets

KEEP_ERRORS = 20
FLUSH_SECONDS = 0.5
ERRORS, REQUESTS = "errors-", "requests-"  # the files' prefixes, one file per worker


def keeps_requests(settings: Settings) -> bool:
    """Whether the bridge keeps a request log: the console is on and `--request-log-size`
    is not 0 (otherwise nothing gathers what the log would show)."""
    return not settings.disable_console and settings.request_log_size > 0


def directory() -> Path:
    path = instance.directory() / "console"
    path.mkdir(exist_ok=True)
    return path


class Ring:
    """One worker's last `keep` items of one kind (tuples, as recorded), written as the
    dicts `shown` makes of them to `PREFIX<pid>.json`, at most once per FLUSH_SECONDS."""

    def __init__(self, prefix: str, keep: int, shown: Callable[[tuple], dict[str, Any]]):
        self.prefix, self.shown = prefix, shown
        self.items: collections.deque[tuple] = collections.deque(maxlen=keep)
        self.flush_due = False

    def add(self, item: tuple) -> None:
        self.items.append(item)
        if not self.flush_due:  # a burst costs one write, not one each
            self.flush_due = True
            import gevent  # the workers are gevent's; imported here so importing is free

            gevent.spawn_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self.flush_due = False
        path = directory() / f"{self.prefix}{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps([self.shown(item) for item in self.items]))
        os.replace(temporary, path)  # a reader never sees half a file


def merged(prefix: str, keep: int) -> list[dict[str, Any]]:
    """The last `keep` items of one kind of all workers, newest first."""
    found: list[dict[str, Any]] = []
    for path in directory().glob(f"{prefix}*.json"):
        try:
            found.extend(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a worker's file replaced meanwhile: its items show next time
    found.sort(key=lambda item: item.get("time", 0), reverse=True)
    return found[:keep]


class Recorder:
    """Feeds on `request.error` and `request.finished` events (see `bridge.core.events`)."""

    def __init__(self, redactor: Redactor, request_log_size: int):
        self.redactor = redactor
        self.errors = Ring(ERRORS, KEEP_ERRORS, self.error)
        self.requests = Ring(REQUESTS, request_log_size, self.request) \
            if request_log_size else None

    def __call__(self, name: str, value: float, labels: dict[str, str]) -> None:
        if name == "request.finished":
            if self.requests is not None and labels.get("api"):  # the client APIs only
                self.requests.add((time.time(), value, labels))
        elif name == "request.error":
            self.errors.add((time.time(), labels))

    def error(self, item: tuple) -> dict[str, Any]:
        at, labels = item
        text = self.redactor.log_text
        return {"time": round(at, 3), "status": int(labels.get("status", "0") or 0),
                "path": text(labels.get("path", ""))[:200],
                "message": text(labels.get("message", "")),
                "request_id": text(labels.get("request_id", ""))[:100]}

    def request(self, item: tuple) -> dict[str, Any]:
        at, duration, labels = item
        text = self.redactor.log_text
        shown = {"time": round(at, 3), "worker": os.getpid(),
                 "status": int(labels.get("status", "0") or 0),
                 "latency_ms": round(duration * 1000, 1),
                 "key": labels.get("client_key") or None,
                 "api": labels.get("api", ""), "method": labels.get("method", ""),
                 "path": text(labels.get("path", ""))[:200],
                 "model": text(labels.get("model", ""))[:200] or None,
                 "cache": labels.get("cache") or None,
                 "prompt_tokens": _count(labels.get("prompt_tokens")),
                 "completion_tokens": _count(labels.get("completion_tokens")),
                 "request_id": text(labels.get("request_id", ""))[:100],
                 "upstream": labels.get("upstream") or None}
        for body in ("prompt", "answer"):  # present only with --request-log-bodies
            if body in labels:
                shown[body] = text(labels[body])  # clipped when recorded
        return shown


def _count(text: str | None) -> int | None:
    return int(text) if text else None


_recorder: Recorder | None = None


def start(settings: Settings) -> None:
    """Start recording this process's errors and requests (once per process)."""
    global _recorder
    if _recorder is None:
        _recorder = Recorder(Redactor(configured_secrets(settings)),
                             settings.request_log_size)
        events.subscribe(_recorder, ("request.finished", "request.error"))


def errors() -> list[dict[str, Any]]:
    """The last `KEEP_ERRORS` errors of all workers, newest first."""
    return merged(ERRORS, KEEP_ERRORS)


def requests(keep: int) -> list[dict[str, Any]]:
    """The request log: the last `keep` requests of all workers, newest first."""
    return merged(REQUESTS, keep) if keep else []
