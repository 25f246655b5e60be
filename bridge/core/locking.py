"""Exclusive `flock`s taken without holding a worker's event loop.

A blocking `flock` waits in the kernel: under gevent the whole worker (every request,
`/health` included) waits with it, and when the holder is another greenlet of the same
process (another open file description of the same file) it waits forever, since that
greenlet can never run to release it. Here the lock is tried without blocking and,
while someone else holds it, tried again after a short sleep (a gevent sleep in a
worker: the loop, and a holder in this process, go on meanwhile).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from typing import IO, Iterator, Union

FIRST_PAUSE = 0.001  # seconds before the second try; doubled up to MAX_PAUSE
MAX_PAUSE = 0.05

Lockable = Union[int, IO]


class LockTimeout(TimeoutError):
    """The lock was still held by someone else when the wait ran out."""


def acquire(fd: Lockable, timeout: float | None = None, what: str = "a file lock") -> None:
    """Take the exclusive lock on `fd`, waiting cooperatively (at most `timeout` seconds
    when given, then `LockTimeout`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = FIRST_PAUSE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if deadline is not None and time.monotonic() >= deadline:
            raise LockTimeout(f"{what} was still held by another process after {timeout:g}s")
        time.sleep(pause)  # gevent's sleep once the worker is patched
        pause = min(pause * 2, MAX_PAUSE)


@contextlib.contextmanager
def exclusive(fd: Lockable, timeout: float | None = None,
              what: str = "a file lock") -> Iterator[None]:
    """Hold the exclusive lock on `fd` for the block (see `acquire`)."""
    acquire(fd, timeout, what)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
