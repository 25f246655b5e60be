"""The instance-local upstream slots: `count` places shared by every gunicorn worker of the
instance, each an exclusive `flock` on one of `count` files in its run directory.

The lock is the place: every worker sees the same ones, and the kernel frees a place if
the worker holding it dies. They are the admission queue's places, the slots without
`--redis-url`, and the Redis slots' fallback while Redis is unreachable.
"""

from __future__ import annotations

import fcntl
import os
import random
from pathlib import Path

from bridge.core.forking import PerProcess


class LockSlots:
    """`count` interchangeable places shared by all processes: a place is a held flock."""

    def __init__(self, directory: Path, name: str, count: int):
        self.paths = [directory / f"{name}-{index}.lock" for index in range(count)]
        # descriptors of this process, opened after fork (a flock is shared across fork),
        # and the places it holds (its own flocks do not exclude it)
        self._held = PerProcess(lambda: ([os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                                          for path in self.paths], set[int]()))

    def try_take(self) -> int | None:
        """Take a free place without waiting; its index, or None when all are taken."""
        fds, taken = self._held.get()
        first = random.randrange(len(fds))
        for step in range(len(fds)):
            index = (first + step) % len(fds)
            if index in taken:
                continue
            try:
                fcntl.flock(fds[index], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            taken.add(index)
            return index
        return None

    def give_back(self, index: int) -> None:
        fds, taken = self._held.get()
        if index in taken:
            taken.discard(index)
            fcntl.flock(fds[index], fcntl.LOCK_UN)
