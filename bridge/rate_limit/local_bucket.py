"""The instance-local token bucket: one bucket shared by every gunicorn worker of the
instance, in a 16-byte file of its run directory (`bridge.core.instance`).

The file is read and written under an exclusive `flock`, so every worker draws from the
same bucket: N calls per second with a burst of N whether the instance runs 1 or 8
workers. The critical section is two syscalls long; nothing yields inside it. It is the
bucket without `--redis-url`, and the Redis bucket's fallback while Redis is unreachable.
"""

from __future__ import annotations

import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.core import locking
from bridge.core.forking import PerProcess

_STATE = struct.Struct("=dd")  # tokens, time.monotonic() of the last update (system-wide)


@dataclass(frozen=True)
class Decision:
    """The bucket's answer to one request."""

    admitted: bool
    wait: float         # seconds until the token is ours (0: now)
    remaining: int      # whole tokens left after this request
    reset: float        # seconds until the bucket is full again


class SharedBucket:
    """A token bucket of `rate` tokens per second and `burst` capacity, kept in a file."""

    def __init__(self, path: Path, rate: float, burst: float):
        self.path = path
        self.rate = rate
        self.burst = burst
        # one descriptor per process, opened after fork: a flock is shared across fork
        self._fd = PerProcess(lambda: os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))

    def take(self, max_wait: float = 0.0) -> Decision:
        """Take one token, reserving a future one when it comes within `max_wait` seconds."""
        fd = self._fd.get()
        with locking.exclusive(fd):  # another worker's turn must not hold our loop
            now = time.monotonic()
            raw = os.pread(fd, _STATE.size, 0)
            tokens, last = _STATE.unpack(raw) if len(raw) == _STATE.size else (self.burst, now)
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            wait = max(0.0, (1.0 - tokens) / self.rate)
            admitted = wait <= max_wait
            if admitted:
                tokens -= 1.0
            os.pwrite(fd, _STATE.pack(tokens, now), 0)
        return Decision(admitted, wait, max(0, math.floor(tokens)),
                        (self.burst - tokens) / self.rate)
