"""Things each process must make for itself: gunicorn forks its workers from the master.

A connection pool, a file descriptor holding a `flock` or a started background greenlet
belongs to the process that made it: a forked worker that used its parent's would share
its sockets and its locks (a `flock` is per open file description, shared across fork).
`PerProcess(make)` holds such a value and makes it lazily, once in each process.
"""

from __future__ import annotations

import os
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """A value made by `make()` on first use in each process (again after a fork)."""

    __slots__ = ("_make", "_value", "_pid")

    def __init__(self, make: Callable[[], T]):
        self._make = make
        self._value: T | None = None
        self._pid = 0

    def get(self) -> T:
        """This process's value, made now if this process has none yet."""
        pid = os.getpid()
        if self._pid != pid:
            # made before the pid is noted: a `make` that fails is tried again next time
            self._value = self._make()
            self._pid = pid
        return self._value  # type: ignore[return-value]

    def made_here(self) -> bool:
        """Whether this process has made its value (so there is something to undo)."""
        return self._pid == os.getpid()
