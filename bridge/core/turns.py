"""Work done once at the end of a turn of the event loop, for all that asked for it in
the turn: what several requests of one turn would each do at once (a metric file's
write, a log line's system call) is then done once for them all.

A worker's requests share turns under load: one turn runs every greenlet whose socket
became ready, and the work they ask for goes out right after, before the loop waits
again. Only the native thread that runs the loop may ask: another one (an off-loop
thread's) does its work at once (`TurnEnd.on_loop`).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from gevent import monkey

native_thread = monkey.get_original("_thread", "get_ident")


class TurnEnd:
    """Calls `work()` once at the end of the current turn of the event loop of this
    process's main native thread, however often `ask()` was called in the turn (after
    a fork: the new process's)."""

    def __init__(self, work: Callable[[], None]):
        self.work = work
        self._forked()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.due = False
        self.loop: Any = None  # the event loop, once asked
        self.thread = native_thread()

    def on_loop(self) -> bool:
        """Whether the caller runs on the loop's native thread (and so may `ask`)."""
        return native_thread() == self.thread

    def ask(self) -> None:
        """Have `work()` run at the end of this turn (once, whoever else asks)."""
        if self.due:
            return
        if self.loop is None:
            import gevent

            self.loop = gevent.get_hub().loop
        self.due = True
        self.loop.run_callback(self._run)

    def _run(self) -> None:
        self.due = False
        self.work()
