"""Answers that every worker of the instance reuses for a moment: `/ready`'s upstream
probes, so that each upstream is probed at most once per `max_age` whatever the request
rate and however many workers answer `/ready`.

A memo is a small JSON file in the instance's run directory (`bridge.core.instance`),
read and written under an exclusive `flock`; nothing yields inside the lock. The worker
that finds an answer too old claims the key (writes its time) before it computes, so the
others keep using the previous answer meanwhile, or, when there is none yet, wait for its
answer instead of asking again.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import gevent

from bridge.core import instance
from bridge.core.forking import PerProcess

_WAIT_STEP = 0.05  # seconds between looks for another worker's answer


class SharedMemo:
    """key → (when computed, JSON value), shared by the instance's workers."""

    def __init__(self, name: str, max_age: float):
        self.name = name
        self.max_age = max_age
        # one descriptor per process, opened after fork: a flock is shared across fork
        self._fd = PerProcess(lambda: os.open(instance.directory() / self.name,
                                              os.O_RDWR | os.O_CREAT, 0o600))

    def get(self, key: str, compute: Callable[[], Any], wait: float) -> Any:
        """The answer computed for `key` less than `max_age` ago by any worker, else
        `compute()`'s (which must return JSON). While another worker computes the first
        answer for `key`, waits up to `wait` seconds for it before computing its own."""
        deadline = time.monotonic() + wait
        while True:
            with self._state() as state:
                now = time.monotonic()
                at, value = state.get(key, (float("-inf"), None))
                fresh = now - at < self.max_age
                if fresh and value is not None:
                    return value
                if not fresh or now >= deadline:
                    state[key] = (now, value)  # claimed: the others wait or reuse `value`
                    break
            gevent.sleep(_WAIT_STEP)  # claimed by another worker, no answer yet
        value = compute()
        with self._state() as state:
            state[key] = (time.monotonic(), value)
        return value

    @contextmanager
    def _state(self) -> Iterator[dict[str, tuple[float, Any]]]:
        fd = self._fd.get()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(fd, os.fstat(fd).st_size, 0)
            try:
                state = {key: tuple(entry) for key, entry in json.loads(raw).items()} \
                    if raw else {}
            except (ValueError, AttributeError, TypeError):
                state = {}  # unreadable: start afresh, at the cost of one probe more
            before = dict(state)
            yield state  # type: ignore[misc]
            if state != before:
                data = json.dumps(state).encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
