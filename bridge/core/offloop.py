"""Running blocking calls (SQLite statements that may wait for another process's lock)
off a worker's event loop: in one native thread, one call at a time.

Under gevent a `threading.Thread` is a greenlet, so SQLite waiting in one would freeze
every request of the worker. `SerialThread.run` hands the call to a native thread of
gevent's own pool when threading is patched (the calling greenlet waits, the loop runs
on), and simply calls it otherwise (the `keys` and `cache` commands, unit tests).

A hand-over costs more than the call when the machine is busy: the thread takes the GIL
several times per call, and the loop's thread waits for it (up to the 5 ms switch
interval, longer when the OS has not given the holder a CPU). Short statements that
only need another process's lock to be free are better retried on the loop itself
between sleeps (`cooperative()`, `pause`): each try returns at once.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import gevent
from gevent import monkey
from gevent.threadpool import ThreadPool

T = TypeVar("T")


def cooperative() -> bool:
    """Whether this process runs gevent's loop (threading patched, as in a worker)."""
    return monkey.is_module_patched("threading")


def pause(seconds: float) -> None:
    """Let the loop run for `seconds` (a greenlet sleep under gevent)."""
    gevent.sleep(seconds)


def background(function: Callable[..., Any], *args: Any) -> None:
    """`function(*args)` in a new greenlet under gevent (nobody waits for it), else now."""
    if cooperative():
        gevent.spawn(function, *args)
    else:
        function(*args)


class SerialThread:
    """One native thread per process (made after fork, on first use) running calls in
    the order they come: what it runs may use a connection no other thread touches."""

    def __init__(self) -> None:
        self._pool: ThreadPool | None = None
        self._pid = 0

    def _threads(self) -> ThreadPool | None:
        if not cooperative():
            return None
        if self._pool is None or self._pid != os.getpid():
            self._pool, self._pid = ThreadPool(1), os.getpid()
        return self._pool

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in the thread; the calling greenlet waits for its result."""
        pool = self._threads()
        return function(*args) if pool is None else pool.apply(function, args)

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        """`function(*args)` in the thread, in turn, without waiting for it (it reports
        its own failures: nobody sees what it returns or raises)."""
        pool = self._threads()
        if pool is None:
            function(*args)
        else:
            pool.spawn(function, *args)
