"""Running blocking calls (SQLite statements that may wait for another process's lock)
off a worker's event loop: in one native thread, one call at a time.

Under gevent a `threading.Thread` is a greenlet, so SQLite waiting in one would freeze
every request of the worker. `SerialThread.run` hands the call to a native thread of
gevent's own pool when threading is patched (the calling greenlet waits, the loop runs
on), and simply calls it otherwise (the `keys` and `cache` commands, unit tests).

Why a thread rather than retrying short statements on the loop between greenlet sleeps:
measured with other processes writing (bench/cache_bench.py part 5, same work), the
loop's stalls were mostly the OS not giving the loop's thread a CPU, and retrying on the
loop made that 3-4 times worse (the loop's thread then pays all the SQLite CPU, so the
OS scheduler favours it less), more than the GIL hand-overs to this thread cost. Nor is
the thread given a lower priority (nice 10): measured the same way, the loop then waited
for the GIL held by the thread the OS did not run (priority inversion), 18.8 ms at worst.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from gevent import monkey
from gevent.threadpool import ThreadPool

T = TypeVar("T")


class SerialThread:
    """One native thread per process (made after fork, on first use) running calls in
    the order they come: what it runs may use a connection no other thread touches."""

    def __init__(self) -> None:
        self._pool: ThreadPool | None = None
        self._pid = 0

    def _threads(self) -> ThreadPool | None:
        if not monkey.is_module_patched("threading"):
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
