"""Small state that every worker of the instance shares: a JSON object in a file of the
instance's run directory (`bridge.core.instance`), read and changed under an exclusive
`flock`; nothing yields inside the lock. For state that changes seldom and stays small:
`/ready`'s last probe of each upstream (`SharedMemo`), the console's failed logins.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import gevent

from bridge.core import instance
from bridge.core.forking import PerProcess

_WAIT_STEP = 0.05  # seconds between looks for another worker's answer


class SharedFile:
    """A JSON object in `directory` (default: the instance's run directory) / `name`."""

    def __init__(self, name: str, directory: Path | None = None):
        self.name = name
        self.directory = directory
        # one descriptor per process, opened after fork: a flock is shared across fork
        self._fd = PerProcess(lambda: os.open(
            (self.directory or instance.directory()) / self.name, os.O_RDWR | os.O_CREAT,
            0o600))

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """The object, to read and change in place; written back if changed."""
        fd = self._fd.get()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(fd, os.fstat(fd).st_size, 0)
            try:
                state = json.loads(raw) if raw else {}
            except ValueError:
                state = {}
            if not isinstance(state, dict):
                state = {}  # unreadable: start afresh (what it held is soon learnt again)
            before = json.dumps(state)
            yield state
            after = json.dumps(state)
            if after != before:
                data = after.encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


class SharedMemo:
    """key → the answer computed for it, reused by every worker for `max_age` seconds.

    The worker that finds an answer too old claims the key (writes its time) before it
    computes, so the others keep using the previous answer meanwhile, or, when there is
    none yet, wait for its answer instead of asking again: `compute` runs at most once
    per `max_age` for the instance, however often and wherever the answer is asked for.
    """

    def __init__(self, name: str, max_age: float):
        self.file = SharedFile(name)
        self.max_age = max_age

    def get(self, key: str, compute: Callable[[], Any], wait: float) -> Any:
        """The answer computed for `key` less than `max_age` ago by any worker, else
        `compute()`'s (which must return JSON, not None). While another worker computes
        the first answer for `key`, waits up to `wait` seconds for it before computing."""
        deadline = time.monotonic() + wait
        while True:
            with self.file.locked() as state:
                now = time.monotonic()
                at, value = state.get(key) or (float("-inf"), None)
                fresh = now - at < self.max_age
                if fresh and value is not None:
                    return value
                if not fresh or now >= deadline:
                    state[key] = [now, value]  # claimed: the others wait or reuse `value`
                    break
            gevent.sleep(_WAIT_STEP)  # claimed by another worker, no answer yet
        value = compute()
        with self.file.locked() as state:
            state[key] = [time.monotonic(), value]
        return value
